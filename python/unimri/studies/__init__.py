"""The paper's studies on top of training: ablations, the MONAI peer, statistics and training
throughput."""
