"""The ``plmu`` command line: ``plmu train EXPERIMENT``, ``plmu evaluate CHECKPOINT``,
``predict``/``translate``/``generate`` for trained checkpoints, and ``plmu bench``.

Errors a user can fix (an unknown experiment, a bad config key, a missing or corrupt data file or
checkpoint) print one line ``plmu: error: ...`` and exit with status 2; ``--debug`` shows the
traceback instead. A run stopped by SIGTERM exits with status 143, one stopped by Ctrl-C with
130 (the first Ctrl-C or SIGTERM stops training after the current step, with ``last.ckpt``
written there, a second at once; run the same command again to resume it).

To add a subcommand: write ``_add_<name>(subparsers)`` that builds its parser and sets
``handler`` (a function of the parsed arguments returning an exit status), and call it in
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

# Exceptions whose message is the whole story for a user: printed as one line.
_USER_ERRORS = (ValueError, TypeError, OSError, KeyError)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog can be computed only when help is shown.

    Listing the experiments imports the training stack (seconds); ``plmu --version`` and the
    other subcommands' help should not pay for it.
    """

    def __init__(self, *args, epilog_factory: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_factory = epilog_factory

    def format_help(self) -> str:
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def _experiments_epilog() -> str:
    from plmu.training import registry

    lines = [f"  {name:<16} {registry.get(name).summary}" for name in registry.names()]
    return "experiments:\n" + "\n".join(lines)


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices (passed to lightning.Trainer)")
    group.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto (default: auto)")
    group.add_argument(
        "--devices",
        default="auto",
        help="how many devices or which: 1, 2, '0,1', auto (default: auto)",
    )
    group.add_argument(
        "--strategy",
        default="auto",
        help="auto, ddp, fsdp, ... (default: auto; plmu train refuses ddp_spawn and ddp_fork, "
        "which train in child processes whose state does not come back)",
    )
    group.add_argument(
        "--num-nodes", type=int, default=1, help="machines for multi-node DDP (default: 1)"
    )
    parser.add_argument(
        "--no-progress-bar", action="store_true", help="hide the progress bar (logs stay)"
    )


def _devices(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def _trainer_options(args: argparse.Namespace) -> dict:
    """The device options shared by ``train`` and ``evaluate``, as runner keyword arguments."""
    return {
        "devices": _devices(args.devices),
        "accelerator": args.accelerator,
        "strategy": args.strategy,
        "num_nodes": args.num_nodes,
        "progress_bar": not args.no_progress_bar,
    }


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an experiment, test it, write OUT/metrics.json",
        description="Train an experiment with its packaged config (the paper's "
        "hyperparameters), then test the best checkpoint. A run resumes automatically "
        "from OUT/checkpoints/last.ckpt; resumed, it may change only the config keys epochs, "
        "max_steps, patience, checkpoint_every_n_steps, num_workers, num_threads and "
        "log_every_n_steps.",
        epilog_factory=_experiments_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help="experiment name (listed below)")
    parser.add_argument("--config", type=Path, help="YAML file overriding config keys")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable); VALUE is read as YAML",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the data is read or downloaded (default: $PLMU_DATA_DIR/NAME, else "
        "~/.cache/plmu/NAME for psmnist and text8, the Hugging Face hub for imdb, qqp, snli and "
        "iwslt15-en-vi; resumed, the directory the run was started with)",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: runs/EXPERIMENT)")
    parser.add_argument(
        "--resume",
        type=Path,
        help="checkpoint to resume from (default: OUT/checkpoints/last.ckpt where it exists)",
    )
    _add_device_options(parser)
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from plmu.training.runner import train

    train(
        args.experiment,
        out=args.out,
        config_file=args.config,
        overrides=args.overrides,
        data_dir=args.data_dir,
        resume=args.resume,
        **_trainer_options(args),
    )
    return 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="test a checkpoint, write OUT/metrics.json",
        description="Rebuild a run from its checkpoint and test it.",
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by plmu train")
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (default: the one used for training)"
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default: RUN/evaluate beside checkpoints/)"
    )
    _add_device_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from plmu.training.runner import evaluate

    evaluate(
        args.checkpoint,
        data_dir=args.data_dir,
        out=args.out,
        **_trainer_options(args),
    )
    return 0


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from plmu import bench

    parser = subparsers.add_parser(
        "bench",
        help="speed benchmarks: training step, memory, sweep, inference",
        description="Time training steps (parallel LMU in every mode, original LMU, LSTM), "
        "peak memory, a sequence-length sweep and inference; print a table, write JSON/PNG.",
    )
    bench.add_arguments(parser)
    parser.set_defaults(handler=bench.run_from_args)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify a text (or a pair) with an imdb/qqp/snli checkpoint",
        description="Print the most probable label and its probability, tab-separated.",
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by plmu train")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="one text, or two for a pair")
    parser.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from plmu.predict import predict

    print(predict(args.checkpoint, *args.texts))
    return 0


def _add_translate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "translate",
        help="translate an English sentence with an iwslt15-en-vi checkpoint",
        description="Translate English to Vietnamese, decoding in the step (RNN) form. The "
        "model learnt IWSLT'15 as it is distributed, Moses-tokenised, so give SENTENCE "
        "tokenised the same way: case kept, punctuation and clitics split off by spaces, and "
        "' \" & | < > [ ] written as &apos; &quot; &amp; &#124; &lt; &gt; &#91; &#93;, e.g. "
        '"I &apos;d like to say &quot; hello &quot; , please ." for: I\'d like to say '
        "\"hello\", please. (Moses' tokenizer.perl -l en, or sacremoses' "
        "MosesTokenizer(lang='en'), writes it; plmu ships no tokeniser.) Untokenised, ' and \" "
        "are unknown (or rare) subwords, and so is punctuation glued to a word. The "
        "translation is printed tokenised and escaped in the same way (docs/iwslt.md).",
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt of plmu train iwslt15-en-vi")
    parser.add_argument("sentence", help="the English sentence, Moses-tokenised (see above)")
    parser.add_argument("--beam", type=int, help="beam size (1: greedy; default: the config's)")
    parser.set_defaults(handler=_translate)


def _translate(args: argparse.Namespace) -> int:
    from plmu.translate import translate

    print(translate(args.checkpoint, args.sentence, args.beam))
    return 0


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt with a trained language model (text8)",
        description="Continue PROMPT by LENGTH characters, one step at a time with the carried "
        "recurrent state (constant cost per character). The prompt is lower-cased; other "
        "characters outside a-z and space are an error.",
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by plmu train text8")
    parser.add_argument("--prompt", required=True, help="text to continue (a-z and space)")
    parser.add_argument(
        "--length", type=int, default=500, help="characters to generate (default: 500)"
    )
    # greedy decoding has no temperature: giving both is an error, not a silently ignored one
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument("--temperature", type=float, help="sampling temperature (default: 1)")
    decoding.add_argument("--greedy", action="store_true", help="always the most likely character")
    parser.add_argument(
        "--seed", type=int, help="random seed for sampling (default: none, a new draw each run)"
    )
    parser.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from plmu.generation import generate_from_checkpoint

    if args.greedy and args.seed is not None:  # it would be ignored silently
        raise ValueError("--seed has no effect with --greedy (nothing is drawn); give one of them")
    temperature = 1.0 if args.temperature is None else args.temperature
    text = generate_from_checkpoint(
        args.checkpoint, args.prompt, args.length, temperature, args.greedy, args.seed
    )
    print(args.prompt.lower() + text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``plmu`` argument parser with all subcommands."""
    from plmu import __version__

    parser = argparse.ArgumentParser(
        prog="plmu", description="Legendre Memory Units: train and evaluate the paper's benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"plmu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_predict(subparsers)
    _add_translate(subparsers)
    _add_generate(subparsers)
    _add_bench(subparsers)
    return parser


def enable_huge_pages() -> None:
    """Set PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` for this process unless the caller chose a value.

    PyTorch's CPU allocator then backs buffers of 2 MB and more with transparent huge pages
    (Linux; ignored elsewhere), so large activations are not page-faulted in again 4 KB at a
    time on every training step (docs/performance.md). PyTorch reads the variable once, at its
    first allocation, so this must run before any tensor exists; ``THP_MEM_ALLOC_ENABLE=0``
    keeps it off.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _user_error(error: Exception) -> bool:
    """Whether ``error``'s message is the whole story: one of :data:`_USER_ERRORS` or Lightning's
    ``MisconfigurationException`` (``--devices 0``, ``--accelerator gpu`` without one, ...)."""
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    misconfiguration = () if exceptions is None else (exceptions.MisconfigurationException,)
    return isinstance(error, (*_USER_ERRORS, *misconfiguration))


def _terminated(error: SystemExit) -> bool:
    """Whether ``error`` is how a run stops on SIGTERM: a ``SIGTERMException``, a ``SystemExit``
    (with status 143 from plmu's graceful stop, :class:`~plmu.training.stopping._GracefulStop`,
    which stops training on every process, under DDP too; with status 0 from Lightning's own
    SIGTERM handling where that acts instead: outside the training loop, in the sanity check or
    the test, or beside another SIGTERM handler), although the run did not finish."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(error, exceptions.SIGTERMException)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plmu`` console script; returns the exit status."""
    enable_huge_pages()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("plmu: interrupted", file=sys.stderr)
        return 130
    except SystemExit as error:
        if isinstance(error.__context__, KeyboardInterrupt):  # Lightning's exit after Ctrl-C
            print("plmu: interrupted", file=sys.stderr)
            return 130
        if not _terminated(error):
            raise
        print("plmu: terminated by SIGTERM", file=sys.stderr)
        return 143
    except Exception as error:
        if args.debug or not _user_error(error):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, KeyError):
            message = f"missing key {message}"
        print(f"plmu: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
