"""``unimri nnunet-path``: the folder nnU-Net's ``nnUNet_extTrainer`` must name."""
from __future__ import annotations

import argparse


def cmd_nnunet_path(args: argparse.Namespace) -> int:
    from unimri.integrations.nnunet import TRAINER_NAMES, trainer_path

    if args.check:
        try:
            import unimri.integrations.nnunet.trainers  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"the trainers cannot be imported ({exc}); pip install 'unimri[nnunet]'") from None
    print(f"export nnUNet_extTrainer={trainer_path()}" if args.export else trainer_path())
    if args.check:
        print(f"trainers: {', '.join(TRAINER_NAMES)}")
    return 0


def add_parsers(sub) -> None:
    """Add the nnU-Net sub-commands to the ``unimri`` argument parser's sub-parsers."""
    p = sub.add_parser("nnunet-path", help="print the folder to put in nnU-Net's nnUNet_extTrainer",
                       description="Print the folder holding unimri's nnU-Net v2 trainers "
                                   "(nnUNetTrainerUnifiedFocal, nnUNetTrainerUnifiedFocalSAS, "
                                   "nnUNetTrainerBudget); nnU-Net finds them through the nnUNet_extTrainer "
                                   "environment variable.",
                       epilog="Example: export nnUNet_extTrainer=$(unimri nnunet-path); "
                              "nnUNetv2_train 1 2d 0 -tr nnUNetTrainerUnifiedFocalSAS")
    p.add_argument("--export", action="store_true", help="print a shell 'export nnUNet_extTrainer=...' line")
    p.add_argument("--check", action="store_true", help="also import the trainers (needs nnunetv2)")
    p.set_defaults(func=cmd_nnunet_path)
