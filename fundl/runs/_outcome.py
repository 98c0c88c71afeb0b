"""What a run leaves when training ends: its status, summary, final state, curves and (for a sweep) members.

One run and a sweep end the same way; a sweep's files also say, per member, who it is and
how it did, and its summary gives the mean and spread over the seeds of each setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fundl._text import loss_first, metrics_text, number
from fundl.distributed import describe_mesh
from fundl.runs._directory import RunDirectory
from fundl.runs._experiment import Run
from fundl.runs._prepare import Plan
from fundl.train import Event, History, Hook, MemberEnd, Record, params_fingerprint


def record_outcome(
    plan: Plan, files: RunDirectory | None, carry: Any, history: History, echo: Callable[[str], None], run_id: str
) -> Run:
    """Writes the outcome (on the writing process): status, and for a run that ended well its results.

    ``summary.json`` and the final train state carry ``run_id``: copied into another run's directory, they are refused.
    """
    members = None if plan.members is None else _members(plan, carry, history)
    summary = {"run_id": run_id, **_summary(plan, carry, history, members)}
    train_state = carry if plan.members is None else carry.states
    done = Run(files.path if files else None, plan.config, plan.experiment, train_state, history, summary, members)
    if files is None:
        return done
    step = history.steps
    if history.interrupted:
        files.set_status("interrupted", step, history.stop_reason)
        echo(f"{history.stop_reason}: checkpoint at step {step}; continue with: fundl resume {files.path}")
        return done
    ended_well = not history.nonfinite
    if ended_well and _spread(train_state):  # never gathered: the final state is the last checkpoint's
        summary["final_state"] = {"checkpoint": step}
    elif ended_well:
        from fundl.distributed import host_copy

        summary["train_state_sha256"] = files.save_final_state(host_copy(train_state), run_id)
    files.write_summary(summary)
    if members is not None:
        files.write_members(members)
    _draw_curves(files, members is not None)
    if ended_well and members is None and plan.experiment.report is not None:
        plan.experiment.report(done)
    for line in _result_lines(summary, members):
        echo(line)
    stopped_early = history.stop_reason and (members is None or all(m["stop_reason"] for m in members))
    status = "failed" if history.nonfinite else "stopped_early" if stopped_early else "finished"
    files.set_status(status, step, history.stop_reason)
    if history.nonfinite:
        echo(f"failed: {history.stop_reason}; the last good checkpoint is kept in {files.checkpoints}")
    echo(f"run directory: {files.path}")
    return done


def _spread(train_state: Any) -> bool:
    """Whether the state is spread over processes or cut over devices, and is saved by each process's shards."""
    import jax

    if jax.process_count() > 1:
        return True
    leaves = [leaf for leaf in jax.tree.leaves(train_state) if isinstance(leaf, jax.Array)]
    return any(len(leaf.sharding.device_set) > 1 and not leaf.sharding.is_fully_replicated for leaf in leaves)


def history_after_training(
    plan: Plan, files: RunDirectory | None, carry: Any, hooks: list[list[Hook]], ends: list[MemberEnd]
) -> History:
    """The history of a run resumed after its training had ended: the records it wrote, and how each lane ended."""
    step, members = plan.population.step_count(carry), plan.members is not None
    lanes = ends or [MemberEnd()] * len(plan.configs)
    for lane, lane_hooks_ in enumerate(hooks):  # what the loop tells its hooks at the end (closing files)
        record = Record(step, step / plan.steps_per_epoch, "train", {}, lane if members else None)
        for hook in lane_hooks_:
            hook(Event("end", record, plan.population.train_state(carry, lane)))
    if not members:
        stop_reason = lanes[0].stop_reason
    else:
        stop_reason = "every member stopped" if all(end.stop_reason for end in lanes) else None
    return History(
        records=files.records() if files else [],
        steps=step,
        epochs=step / plan.steps_per_epoch,
        stop_reason=stop_reason,
        nonfinite=False,  # a non-finite state is never saved
        interrupted=False,
        members=tuple(lanes),
        wall_s=0.0,
        compile_s=0.0,
        steps_per_call=0,
        steps_per_call_reason="none: training had ended when the run was resumed",
        mesh=describe_mesh(plan.execution.mesh),
        traces={},
    )


def _summary(plan: Plan, carry: Any, history: History, members: list[dict[str, Any]] | None) -> dict[str, Any]:
    keys = (
        "steps",
        "epochs",
        "wall_s",
        "compile_s",
        "stop_reason",
        "steps_per_call",
        "steps_per_call_reason",
        "traces",
    )
    summary: dict[str, Any] = {key: getattr(history, key) for key in keys}
    if members is None:
        return {**summary, "params_fingerprint": params_fingerprint(carry.params), "metrics": history.final_metrics()}
    settings = _settings_spread(members)
    return {
        **summary,
        "members": len(members),
        "params_fingerprint": params_fingerprint(carry.states.params),
        "settings": settings,
        "metrics": {
            split: {k: v["mean"] for k, v in metrics.items()} for split, metrics in settings[0]["metrics"].items()
        }
        if len(settings) == 1
        else {},
        "frozen": [m["frozen"] for m in members if m["frozen"]],
    }


def _members(plan: Plan, carry: Any, history: History) -> list[dict[str, Any]]:
    """Each member: who it is (seed, settings), its final metrics and params, and how it ended.

    The records are grouped and the params copied to the host once: a sweep of tens of thousands of members
    is described in seconds (a scan of every record per member took hours).
    """
    finals: dict[int, dict[str, dict[str, float]]] = {}
    for record in history.records:
        finals.setdefault(record.member if record.member is not None else -1, {})[record.split] = dict(record.metrics)
    params = jax.tree.map(np.asarray, jax.device_get(carry.states.params))
    members = []
    for index, end in enumerate(history.members):
        settings = plan.settings(index)
        who = f"member {index} (seed {plan.seeds[index]}{''.join(f', {k}={v}' for k, v in settings.items())})"
        members.append(
            {
                "member": index,
                "seed": plan.seeds[index],
                "settings": settings,
                "metrics": finals.get(index, {}),
                "params_fingerprint": params_fingerprint(jax.tree.map(lambda leaf: leaf[index], params)),
                "stop_reason": end.stop_reason,
                "frozen": f"{who} {end.stop_reason}" if end.nonfinite else None,
            }
        )
    return members


def _settings_spread(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: the mean, std, min and max of each final metric over its seeds (those that trained to the end)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for member in members:
        groups.setdefault(repr(sorted(member["settings"].items())), []).append(member)
    out = []
    for group in groups.values():
        healthy = [m for m in group if not m["frozen"]] or group
        spread: dict[str, dict[str, dict[str, float]]] = {}
        for split, metrics in healthy[0]["metrics"].items():
            for name in metrics:
                values = np.array([m["metrics"].get(split, {}).get(name, np.nan) for m in healthy], np.float64)
                spread.setdefault(split, {})[name] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                    "min": float(np.min(values)),
                    "max": float(np.max(values)),
                }
        out.append(
            {
                "settings": group[0]["settings"],
                "members": [m["member"] for m in group],
                "seeds": [m["seed"] for m in group],
                "frozen": len(group) - len([m for m in group if not m["frozen"]]),
                "metrics": spread,
            }
        )
    return out


def _result_lines(summary: dict[str, Any], members: list[dict[str, Any]] | None) -> list[str]:
    """The console's last lines: the final metrics (a sweep's: per setting, mean ± std [min, max] over its seeds)."""
    if members is None:
        return [f"{split}: {metrics_text(metrics)}" for split, metrics in summary["metrics"].items()]
    lines = []
    for setting in summary["settings"]:
        named = ", ".join(f"{k}={v}" for k, v in setting["settings"].items())
        lines.append(
            f"{named + ': ' if named else ''}{len(setting['seeds'])} seeds"
            + (f", {setting['frozen']} frozen" if setting["frozen"] else "")
        )
        for split, metrics in setting["metrics"].items():
            lines.append(
                f"  {split}: "
                + "  ".join(
                    f"{k} {number(v['mean'])} ± {_bare(v['std'])} [{_bare(v['min'])}, {_bare(v['max'])}]"
                    for k, v in ((name, metrics[name]) for name in loss_first(metrics))
                )
            )
    return [*lines, *summary["frozen"], f"{len(members)} members"]


def _bare(value: float) -> str:
    return number(value).strip()


def _draw_curves(files: RunDirectory, members: bool) -> None:
    """``curves.png`` from every record of the run (none if nothing was logged: a NaN at the first step)."""
    from fundl.plots import plot_curves, plot_member_curves

    records = files.records()
    if records:
        (plot_member_curves if members else plot_curves)(records, files.curves, title=files.path.name)
