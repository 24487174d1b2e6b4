"""Scipion 3 plugin for pupick, the positive-unlabeled CNN particle picker.

pupick lives in its own environment (it needs torch, which Scipion's environment must never pull);
the protocols run its command line as a subprocess and exchange coordinates with it as plain CSV.
"""
import os
import shutil

import pwem
import pyworkflow.utils as pwutils
from pyworkflow import VarTypes

from .constants import PUPICK_ACTIVATION_VAR, PUPICK_DEFAULT, PUPICK_VAR
from . import runner

__version__ = '0.1.0'
_logo = None
_references = ['Bepler2019']


class Plugin(pwem.Plugin):
    _url = ''  # no public home page yet
    _processingField = ['SPA']

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(PUPICK_VAR, PUPICK_DEFAULT,
                       description='The pupick executable: a name found on PATH or a full path, '
                                   'e.g. /opt/pupick/.venv/bin/pupick.',
                       var_type=VarTypes.STRING)
        cls._defineVar(PUPICK_ACTIVATION_VAR, '',
                       description='Optional shell command run before pupick to enter its environment, '
                                   'e.g. "conda activate pupick". Empty: none.',
                       var_type=VarTypes.STRING)

    @classmethod
    def getExecutable(cls):
        return cls.getVar(PUPICK_VAR) or PUPICK_DEFAULT

    @classmethod
    def getActivationCmd(cls):
        return (cls.getVar(PUPICK_ACTIVATION_VAR) or '').strip()

    @classmethod
    def getEnviron(cls):
        """Environment for pupick: Scipion's own Python settings must not leak into pupick's interpreter."""
        env = pwutils.Environ(os.environ)
        for var in ('PYTHONPATH', 'PYTHONHOME'):
            env.pop(var, None)
        env['PYTHONUNBUFFERED'] = '1'  # log lines appear as they happen
        env.setdefault('TQDM_MININTERVAL', '10')  # progress bars redraw rarely in a log file
        return env

    @classmethod
    def getCommand(cls, args):
        """Argument list that runs `pupick args...` (after the activation command, if any)."""
        return runner.buildCommand(cls.getExecutable(), args, cls.getActivationCmd())

    @classmethod
    def runPupick(cls, args, gpus=(), cwd=None):
        """Run `pupick args...`; Scipion's %(GPU)s placeholder in args becomes the step's GPU id."""
        runner.run(cls.getCommand(runner.substituteGpu(args, list(gpus))), env=cls.getEnviron(), cwd=cwd)

    @classmethod
    def validateInstallation(cls):
        if cls.getActivationCmd():
            return []  # the executable only exists after activation: nothing to check here
        exe = cls.getExecutable()
        if shutil.which(exe) is None:
            return ["pupick executable '%s' not found. Install pupick (pip install pupick, in its own "
                    "environment) and set %s to the executable's full path, or %s to the command that "
                    "activates its environment, in the [PLUGINS] section of scipion.conf."
                    % (exe, PUPICK_VAR, PUPICK_ACTIVATION_VAR)]
        return []

    @classmethod
    def defineBinaries(cls, env):
        """Nothing to build: pupick is a pip package installed in its own environment."""
