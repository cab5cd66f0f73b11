"""What several verbs share: the --lab/--lab-dir options and the lab they name."""
from __future__ import annotations

import argparse
import os
import sys

from ..lab.labs import find_lab


def lab_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lab", help="lab name (default: the only lab that is up)")
    p.add_argument("--lab-dir", help="the lab's directory (default: $NETLAB_ROOT/<name>)")


def lab_from_args(args):
    """The lab of ``--lab``/``--lab-dir`` (or the only one up); None after saying why."""
    st = find_lab(args.lab, os.path.abspath(args.lab_dir) if args.lab_dir else None)
    if st is None and (args.lab or args.lab_dir):
        print(f"netlab: lab {args.lab or args.lab_dir} is not up", file=sys.stderr)
    return st
