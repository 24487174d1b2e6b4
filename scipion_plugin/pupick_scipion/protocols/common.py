"""Pieces shared by the pupick protocols."""
import functools
import json
import os
import shlex

import pyworkflow.protocol.params as params

from .. import Plugin
from ..runner import GPU_PLACEHOLDER


# Parameters an older plugin version saved with a protocol and pupick has since removed. A saved protocol that has
# one set passes it on, and pupick refuses it with its one line (the reason and the replacement, worded in pupick),
# before any work.
REMOVED_PARAMS = ('bootstrap',)


def addGpuParams(form):
    """The hidden GPU parameters Scipion shows in the run header of GPU-capable protocols."""
    form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                   label='Use GPU',
                   help='Run pupick on a CUDA GPU (the first id of the list below). No: run on the CPU.')
    form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                   label='GPU id',
                   help='GPU to use, as numbered by nvidia-smi. pupick uses one GPU per step; with several '
                        'ids and threads, Scipion gives each step its own.')


def addExtraParams(form, command):
    form.addParam('extraParams', params.StringParam, default='',
                  expertLevel=params.LEVEL_ADVANCED,
                  label='Additional arguments',
                  help='More options for `pupick %s`, as on the command line (see `pupick %s --help`).'
                       % (command, command))


def addServerParams(form):
    """A pupick server URL (and its token file): the protocol then talks HTTP to `pupick serve` instead of running
    pupick here, so this environment needs no pupick installed."""
    form.addParam('serverUrl', params.StringParam, default='',
                  label='pupick server URL',
                  help='e.g. http://gpu-box:8765: pick on a running `pupick serve` (its --data-root must hold the '
                       'micrographs). Empty: run pupick on this machine.')
    form.addParam('tokenFile', params.PathParam, default='', condition='serverUrl',
                  label='Server token file',
                  help='The file holding the server\'s token on one line. Empty: $PUPICK_TOKEN_FILE, or no token.')


class _InstanceOrClass:
    """A method pyworkflow may call on the class (a classmethod there) or on a protocol (then it sees the form)."""

    def __init__(self, func):
        self.func = func

    def __get__(self, obj, cls):
        return functools.partial(self.func, obj, cls)


def _validateInstallation(prot, cls):
    if prot is not None and prot._serverUrl():
        return []  # server mode: the work runs in the server's pupick; none is needed here
    return super(PupickProtocolMixin, cls).validateInstallation()


class PupickProtocolMixin:
    """Running pupick from a protocol step: device selection and the subprocess call."""

    def _deviceArgs(self):
        if self.usesGpu():
            return ['--device', 'cuda:' + GPU_PLACEHOLDER]
        return ['--device', 'cpu']

    def _serverUrl(self):
        return (self.getAttributeValue('serverUrl', '') or '').strip()

    validateInstallation = _InstanceOrClass(_validateInstallation)

    def _removedParams(self):
        """The removed parameters this (saved) protocol has set."""
        return [name for name in REMOVED_PARAMS if self.getAttributeValue(name, False)]

    def _extraArgs(self):
        text = self.getAttributeValue('extraParams', '') or ''
        return shlex.split(text)

    def _runPupick(self, args):
        executor = getattr(self, '_stepsExecutor', None)
        gpus = executor.getGpuList() if (executor is not None and self.usesGpu()) else []
        Plugin.runPupick(args, gpus=gpus or [])

    def _writeInfo(self, name, info):
        with open(self._getExtraPath(name), 'w') as fh:
            json.dump(info, fh, indent=1)

    def _readInfo(self, name):
        path = self._getExtraPath(name)
        if not os.path.exists(path):
            return None
        with open(path) as fh:
            return json.load(fh)
