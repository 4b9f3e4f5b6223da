"""What training, inference and the studies all run on.

``registry`` (names, checks and factories of models, losses, datasets, metrics),
``precision`` (autocast policy), ``resize`` (stage resizing of images and labels),
``inference`` (:class:`InferenceSpec`, whole-case prediction), ``scoring`` (the metric
table of a model on cases), ``plots`` (curves, bars and overlays of runs and studies) and
``provenance`` (commit, machine, CPU time and load of a results file).
Nothing here imports :mod:`unimri.train`, :mod:`unimri.infer` or :mod:`unimri.studies`.
"""
