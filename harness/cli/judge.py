"""`supportbench judge`: a model judge over an OpenAI-compatible endpoint votes on the store's pairs."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    """Ask the judge about --pairs pairs in both orders; store its votes; write eval/judge.json and print."""
    from supportbench.files import SupportBenchError, write_json
    from supportbench.layout import RunDir
    from supportbench.preference.analysis import judge_agreement
    from supportbench.preference.judge import client_for, judge_pairs, load_rubric, pairs_to_judge
    from supportbench.preference.store import PreferenceStore

    if args.pairs < 1:
        raise SupportBenchError(f"--pairs {args.pairs}: judge at least one pair")
    run = RunDir(Path(args.run))
    rubric = load_rubric(args.rubric)
    client = client_for(args.endpoint, args.api_key_env)  # before any model loads: a missing key fails here
    store = PreferenceStore(Path(args.ratings) if args.ratings else run.ratings_store)
    pairs = pairs_to_judge(store, args.pairs)
    if len(pairs) < args.pairs:  # too few stored: new pairs from the next test queries, as the Rate tab makes them
        from supportbench.serve.assistant import Assistant
        from supportbench.serve.rate import RateSession

        assistant = Assistant(run.path, profile=args.profile)
        session = RateSession(run.path, assistant, store.path)
        pairs += [session.new_pair("", assistant.decoding.max_new_tokens) for _ in range(args.pairs - len(pairs))]
    result = judge_pairs(store, pairs, client, args.model, rubric)
    result = {
        "endpoint": args.endpoint,
        "model": args.model,
        "rubric": args.rubric or "bundled",
        **result,
        "agreement": judge_agreement(store.votes()).get(result["judge"]),
    }
    write_json(run.eval.judge, result)
    flips = result["position_flip_rate"]
    print(
        f"{result['judge']}: {result['pairs']} pairs asked in both orders; {result['votes_stored']} votes stored, "
        f"{result['position_flips']} position flips (stored as ties"
        + (f", rate {flips:.0%}" if flips is not None else "")
        + f"), {result['unparseable']} unparseable answers, {result['errors']} errors after retries"
    )
    agreement = result["agreement"]
    if agreement and agreement["shared_pairs"]:
        a = agreement["agreement"]
        print(
            f"agrees with the people on {a['mean']:.0%} of {agreement['shared_pairs']} pairs (kappa {agreement['cohen_kappa']:.2f})"
        )
    else:
        print("no pair a person also voted on: agreement cannot be measured yet")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    from supportbench.cli.options import add_command, add_profile_option

    p = add_command(
        sub,
        "judge",
        run,
        "a model judge (any OpenAI-compatible endpoint) votes on blind pairs, both orders",
        "Ask a judge model behind an OpenAI-compatible chat endpoint (a hosted API, vLLM, Ollama, llama.cpp's "
        "server, or `supportbench app`'s own /v1) which of two replies a support team should send, for each pair "
        "in the preference store (pairs people voted on first; new pairs from test queries when there are too "
        "few), once as shown and once swapped; a disagreement is stored as a tie. Its votes go into the store as "
        "the rater judge:MODEL; eval/judge.json has every answer, the position-flip rate, the unparseable answers "
        "and the errors, and the agreement with people's votes on shared pairs.",
        run_folder="the run whose pairs (and store) the judge rates",
    )
    p.add_argument("--endpoint", required=True, help="the server's base URL, /v1 included (http://127.0.0.1:7860/v1)")
    p.add_argument("--model", required=True, help="the judge model's name on that server")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (default: none)")
    p.add_argument("--rubric", metavar="FILE", help="YAML rubric: system, prompt, verdicts (default: bundled)")
    p.add_argument("--pairs", type=int, default=10, help="pairs to judge (default: %(default)s)")
    p.add_argument("--ratings", metavar="DB", help="the preference store (default: RUN/ratings.sqlite)")
    add_profile_option(p, "for new pairs")
