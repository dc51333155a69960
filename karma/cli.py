"""The scripts' one error path: expected errors become one line on stderr, not a traceback.

Bad paths, checkpoints, data and flags raise OSError / ValueError / KeyError with a message that
names the file, key or flag; a locked --out raises RunLocked. `run_main` prints such an error as
`<script>: error: <message>` and exits 2 (argparse's code for bad usage); a run stopped by its
divergence guard exits 1; Ctrl-C exits 130. `--debug` (or KARMA_DEBUG=1) shows the traceback.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

from karma.errors import RunLocked, TrainingDiverged

EXPECTED = (OSError, ValueError, KeyError, RunLocked)


def device_arg(value: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:N, and CUDA only where a CUDA device exists
    (checked at parse time, so a bad value stops the program before any model loads)."""
    kind, _, index = value.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{value!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value!r}: no CUDA device is available here (torch "
                                         f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    if index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{value!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return value


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: KARMA_DEBUG=1)")


def run_main(main, argv=None, prog: str | None = None) -> int:
    """Call main(argv); return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("KARMA_DEBUG", "") not in ("", "0")
    prog = prog or Path(sys.argv[0]).name
    try:
        main(argv)
        return 0
    except TrainingDiverged as e:
        if debug:
            raise
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 1
    except EXPECTED as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

