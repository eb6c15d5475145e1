"""`mlx_ft eval`: loss and generation metrics of a run on a prepared split (`mlx_ft.inference.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlx_ft.cli.args import RUN_HELP, Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval",
        help="score a run on a data split: loss, exact match, BLEU, ROUGE-L …",
        description="Loss and perplexity over the learned tokens of a prepared split (on preference pairs, "
        "of the chosen answers, with preference accuracy and the log-probability margin), and generation "
        "metrics on each example's final answer (greedy): exact match, label accuracy with a "
        "confusion table when the answers are a small set of labels, BLEU-4 and ROUGE-L (characters "
        "for Chinese, words otherwise), and the length ratio. Per task when examples carry a `task` "
        "field. A GRPO run's rewards score the answers too (mean reward, and each reward's mean); --rewards "
        "scores any run with rewards of your choosing. Writes metrics.json and predictions.jsonl to RUN/eval.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--data", metavar="DIR", help="prepared data folder (default: the run's training data)")
    p.add_argument("--split", default="test", help="which split file to score (default test)")
    p.add_argument(
        "--compare-base", action="store_true", help="score the base model without the adapter too, side by side"
    )
    p.add_argument(
        "--by-field",
        metavar="NAME",
        help="break every metric down by this field of the examples (default: `task` when the examples have it)",
    )
    p.add_argument("--out", metavar="DIR", help="where to write the results (default RUN/eval)")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="the most tokens any answer may take (default 1024); each example stops sooner, at twice its own "
        "expected answer's tokens + 16",
    )
    p.add_argument("--batch-size", type=int, default=8, help="examples per batch for the loss (default 8)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N examples of the split (a quick look)")
    p.add_argument(
        "--constrained",
        action="store_true",
        help="also answer every example held to its task's pattern from --recipe, as `serve --task` does, and "
        "report both (columns 'base constrained', 'tuned constrained')",
    )
    p.add_argument(
        "--recipe",
        metavar="RECIPE",
        help="the recipe whose task patterns --constrained holds answers to (a folder with recipe.yaml or a shipped "
        "recipe name: miners, router); each example's `task` field names its task. With --rewards, also the recipe "
        "the fields and choice rewards read (default the run's)",
    )
    p.add_argument(
        "--rewards",
        metavar="LIST",
        help="score every answer with these rewards, as a GRPO config lists them (a YAML list, e.g. "
        "'[{name: fields}, {name: length, max: 40, weight: 0.1}]'), in place of a GRPO run's own: to compare an SFT "
        "run with a GRPO run on the same rewards",
    )
    p.set_defaults(func=cmd_eval, needs_mlx=True)


def cmd_eval(args: argparse.Namespace) -> None:
    from mlx_ft.data import recipes
    from mlx_ft.errors import UserError
    from mlx_ft.inference import evaluate

    if args.constrained and not args.recipe:
        raise UserError("--constrained and --recipe go together: the recipe's task patterns hold the answers")
    if args.recipe and not (args.constrained or args.rewards):
        raise UserError(
            "--recipe goes with --constrained (its task patterns hold the answers) or --rewards (the recipe the "
            "rewards read)"
        )

    report = evaluate.evaluate(
        args.run,
        args.data,
        args.split,
        compare_base=args.compare_base,
        by_field=args.by_field,
        out=Path(args.out) if args.out else None,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
        constrained_by=recipes.load(args.recipe) if args.constrained else None,
        rewards=_rewards(args.rewards) if args.rewards is not None else None,
        rewards_recipe=args.recipe,
    )
    print(evaluate.format_report(report))


def _rewards(text: str) -> list:
    """--rewards: a YAML (or JSON) list of reward specs; each spec is checked by `rewards.build`."""
    import yaml

    from mlx_ft.errors import UserError

    example = "e.g. --rewards '[{name: exact}, {name: length, max: 40}]'"
    try:
        specs = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"--rewards: not a YAML list ({str(e).splitlines()[0]}); {example}") from None
    if not isinstance(specs, list) or not specs:
        raise UserError(f"--rewards must be a non-empty list of rewards, {example}")
    return specs
