"""Experiments: configs with checked overrides, run directories, checkpoints, resume.

``run(example, settings)`` is what ``fundl run`` does; ``resume(directory)`` continues an
interrupted run exactly; ``load_run(directory)`` brings a finished run back (config,
model, data, params), verified, to evaluate, sample or continue from it.
"""

from fundl.runs._checkpoints import Checkpoints as Checkpoints
from fundl.runs._config import (
    DEFAULTS as DEFAULTS,
)
from fundl.runs._config import (
    Config as Config,
)
from fundl.runs._config import (
    ConfigError as ConfigError,
)
from fundl.runs._config import (
    override as override,
)
from fundl.runs._config import (
    parse_settings as parse_settings,
)
from fundl.runs._experiment import (
    Experiment as Experiment,
)
from fundl.runs._experiment import (
    Run as Run,
)
from fundl.runs._experiment import (
    bundled_examples as bundled_examples,
)
from fundl.runs._experiment import (
    initial_train_state as initial_train_state,
)
from fundl.runs._experiment import (
    load_example as load_example,
)
from fundl.runs._experiment import (
    resolve_config as resolve_config,
)
from fundl.runs._optimizers import OPTIMIZERS as OPTIMIZERS
from fundl.runs._optimizers import make_optimizer as make_optimizer
from fundl.runs._run import load_run as load_run
from fundl.runs._run import resume as resume
from fundl.runs._run import run as run
from fundl.runs._run import sample as sample
from fundl.runs._state_file import restore_train_state as restore_train_state
from fundl.runs._state_file import save_train_state as save_train_state
from fundl.runs._sweep import Sweep as Sweep
from fundl.runs._sweep import parse_seeds as parse_seeds
from fundl.runs._sweep import parse_sweep as parse_sweep
from fundl.runs._sweep import sweep as sweep
from fundl.runs._tools import (
    compare_runs as compare_runs,
)
from fundl.runs._tools import (
    format_runs as format_runs,
)
from fundl.runs._tools import (
    list_runs as list_runs,
)
from fundl.runs._tools import (
    plot_runs as plot_runs,
)
from fundl.runs._tools import (
    show_run as show_run,
)
