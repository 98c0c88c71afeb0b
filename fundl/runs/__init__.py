"""Experiments: configs with checked overrides, run directories, checkpoints, resume, sweeps.

``run(example, settings)`` is what ``fundl run`` does (``seeds=``/``sweep=`` make it a sweep
of many members trained as one program); ``resume(directory)`` continues an interrupted run
or sweep exactly; ``load_run(directory)`` brings a finished run back (config, model, data,
params), verified, to evaluate, sample or continue from it.
"""

from typing import TYPE_CHECKING

from fundl._lazy import exports as _exports

# The table of contents: each name's module is imported on first use (see fundl._lazy).
if TYPE_CHECKING:
    from fundl.runs._checkpoints import Checkpoints as Checkpoints
    from fundl.runs._config import (
        DEFAULTS as DEFAULTS,
        Config as Config,
        ConfigError as ConfigError,
        override as override,
        parse_settings as parse_settings,
    )
    from fundl.runs._directory import RunDirectory as RunDirectory
    from fundl.runs._experiment import (
        Experiment as Experiment,
        Run as Run,
        bundled_examples as bundled_examples,
        load_example as load_example,
        resolve_config as resolve_config,
    )
    from fundl.runs._files import DiskFull as DiskFull
    from fundl.runs._identity import IdentityError as IdentityError
    from fundl.runs._lifecycle import RunAborted as RunAborted, StartInterrupted as StartInterrupted
    from fundl.runs._lock import DirectoryInUse as DirectoryInUse
    from fundl.runs._optimizers import OPTIMIZERS as OPTIMIZERS, make_optimizer as make_optimizer
    from fundl.runs._pack import pack as pack
    from fundl.runs._prepare import (
        SWEEPABLE as SWEEPABLE,
        Plan as Plan,
        loop_options as loop_options,
        parse_seeds as parse_seeds,
        parse_sweep as parse_sweep,
        prepare as prepare,
    )
    from fundl.runs._ranges import RANGES as RANGES
    from fundl.runs._run import load_run as load_run, resume as resume, run as run, sample as sample, sweep as sweep
    from fundl.runs._state_file import restore_train_state as restore_train_state, save_train_state as save_train_state
    from fundl.runs._tools import (
        compare_runs as compare_runs,
        format_runs as format_runs,
        list_runs as list_runs,
        plot_runs as plot_runs,
        show_run as show_run,
    )

__getattr__, __dir__, __all__ = _exports(__name__, __file__)
