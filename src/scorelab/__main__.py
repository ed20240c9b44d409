"""`python -m scorelab ...`: the command line, also as torchrun's module (`torchrun --nproc-per-node 2 -m scorelab
sample ...`). A leading `--` (which keeps torchrun from reading the command's options as its own) is dropped."""
import sys

from .cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    sys.exit(main(argv))
