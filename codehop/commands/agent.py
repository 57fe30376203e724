"""`codehop agent "task" --repo PATH [--json]`: the tool-using code agent over a repository."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codehop.model_setup import add_model_options
from runtime.errors import NotFoundError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agent", help="answer a question or write a patch over a repository")
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument("--repo", default=".", help="repository root (default: .)")
    parser.add_argument("--workspace", help="workspace directory (default: $CODEHOP_WORKSPACE or ./.codehop)")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=24_000)
    parser.add_argument("--json", action="store_true", help="print the whole run as one JSON document")
    parser.add_argument("--unsafe-exec", action="store_true",
                        help="run the model's code in a plain subprocess when no jail (bubblewrap) can be "
                             "built here: it can then read and write your files and reach the network")
    add_model_options(parser)
    parser.set_defaults(func=run)


def build_agent(repo: Path, workspace: Path, settings, max_steps: int, max_tokens: int,
                unsafe_exec: bool = False):
    """Wire the real objects: RepoIndex over the repo, the configured generator, the tools."""
    import dataclasses

    from agents.code_agent import AgentConfig, CodeAgent
    from agents.tools import build_toolbox
    from code_tools.repo import RepoIndex
    from code_tools.sandbox import AGENT_LIMITS, runner
    from codehop.model_setup import load_configured_generator

    generator = load_configured_generator(settings)
    limits = dataclasses.replace(AGENT_LIMITS, isolation="unsafe" if unsafe_exec else "auto")
    repo_index = RepoIndex.open(repo, workspace, settings.repo_config())
    tools = build_toolbox(repo, runner(limits), repo_index=repo_index)
    return CodeAgent(generator, tools, AgentConfig(max_steps=max_steps, max_tokens=max_tokens,
                                                   temperature=settings.generator.temperature))


def run(args: argparse.Namespace) -> int:
    from agents.code_agent import AgentResult
    from codehop.config import load_settings, resolve_workspace
    from codehop.model_setup import with_model_options

    repo = Path(args.repo).expanduser()
    if not repo.is_dir():
        raise NotFoundError(f"--repo {repo} is not a directory")
    settings = with_model_options(load_settings(getattr(args, "config", None)), args)
    agent = build_agent(repo, resolve_workspace(args.workspace, settings), settings, args.max_steps,
                        args.max_tokens, unsafe_exec=args.unsafe_exec)
    if args.unsafe_exec:
        print("codehop: warning: --unsafe-exec: the model's code runs without a jail", file=sys.stderr)
    result = None
    for event in agent.run_stream(args.task):
        if isinstance(event, AgentResult):
            result = event
        elif not args.json:
            tool = f"{event.tool}({json.dumps(event.args)})" if event.tool else "finish"
            print(f"[step {event.index}] {tool}", file=sys.stderr)
            if event.error:
                print(f"    error: {event.error}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"status: {result.status} ({len(result.steps)} steps, {result.tokens_used} tokens)")
    if result.answer:
        print(result.answer)
    if result.patch:
        print(result.patch)
    if result.patch_error:
        print(f"patch rejected: {result.patch_error}")
    return 0
