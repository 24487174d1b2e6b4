"""Pick particles with a trained pupick model, in batches, also while micrographs stream in."""
import os

import pyworkflow.protocol.params as params
from pyworkflow.object import Float
from pwem.objects import Coordinate
from pwem.protocols import ProtParticlePickingAuto

from ..constants import SCORE_ATTR
from ..convert import ConvertError, boxSizeRule, linkMicrographs, readPicks, splitByKey, writeRows
from ..server import ServerClient
from .common import PupickProtocolMixin, addExtraParams, addGpuParams, addServerParams

MODEL_FROM_PROTOCOL = 0
MODEL_FROM_FILE = 1
MODEL_GENERAL = 2  # the general model shipped with pupick: picks any particle size given its diameter


class ProtPupickPick(PupickProtocolMixin, ProtParticlePickingAuto):
    """Pick particles with a trained pupick model. Works in streaming: micrographs are picked in
    batches as they arrive and the output coordinates grow until the input set is closed. Each
    coordinate carries its CNN score (a logit) as the extra attribute _pupickScore, so the picks can
    be filtered by score later."""
    _label = 'pick'

    def __init__(self, **kwargs):
        ProtParticlePickingAuto.__init__(self, **kwargs)
        self.stepsExecutionMode = params.STEPS_PARALLEL

    def _defineParams(self, form):
        ProtParticlePickingAuto._defineParams(self, form)
        form.addParam('modelSource', params.EnumParam, choices=['pupick train protocol', 'model file',
                                                        'general model (shipped)'],
                      default=MODEL_FROM_PROTOCOL, display=params.EnumParam.DISPLAY_HLIST,
                      label='Model from')
        form.addParam('inputModel', params.PointerParam, pointerClass='PupickModel',
                      condition='modelSource == %d' % MODEL_FROM_PROTOCOL,
                      label='pupick model', help='The output of a pupick train protocol.')
        form.addParam('modelFile', params.PathParam,
                      condition='modelSource == %d' % MODEL_FROM_FILE,
                      label='Model file',
                      help='A model file written by `pupick train` (.pt), e.g. trained once for a sample '
                           'and reused across sessions.')
        form.addParam('particleDiameter', params.FloatParam, allowsNull=True,
                      condition='modelSource in (%d, %d)' % (MODEL_FROM_FILE, MODEL_GENERAL),
                      label='Particle diameter (Å)',
                      help='Model file: the diameter the model was trained for; used for the default box size '
                           '(not needed when a box size is given). General model: the particle diameter to pick '
                           '(required).')
        addServerParams(form)

        form.addSection(label='Picking')
        form.addParam('threshold', params.FloatParam, allowsNull=True,
                      label='Score threshold',
                      help='Keep picks scoring above this logit (0 is a 50% probability). Empty: pupick\'s '
                           'default, low enough not to cut recall; filter on _pupickScore later.')
        form.addParam('minDistance', params.IntParam, default=0, validators=[params.GE(0)],
                      label='Minimum distance (px)',
                      help='Smallest distance between two picks, in pixels of the input micrographs. '
                           '0: the particle radius recorded in the model.')
        form.addParam('maxPicks', params.IntParam, default=0, validators=[params.GE(0)],
                      label='Max picks per micrograph',
                      help='Keep only the best-scored picks of each micrograph. 0: no limit.')
        form.addParam('boxSize', params.IntParam, default=0, validators=[params.GE(0)],
                      label='Box size (px)',
                      help='Box size recorded on the output coordinates. 0: the smallest even number of '
                           'pixels >= 1.5 x the particle diameter.')
        addExtraParams(form, 'pick')
        addGpuParams(form)
        form.addParallelSection(threads=1, mpi=0)
        self._defineStreamingParams(form)
        # One pupick call per batch of everything available: it amortises start-up and model loading.
        form.getParam('streamingBatchSize').setDefault(0)

    # --------------------------- STEPS ---------------------------------------
    def _insertPickMicrographStep(self, mic, prerequisites, *args):
        return self._insertPickMicrographListStep([mic], prerequisites, *args)

    def _pickMicrograph(self, mic, *args):
        self._pickMicrographList([mic], *args)

    def _pickMicrographList(self, micList, *args):
        if not micList:
            return
        batch = self._getTmpPath('batch_%06d' % micList[0].getObjId())
        micsDir = os.path.join(batch, 'micrographs')
        linkMicrographs([(m.getObjId(), m.getFileName()) for m in micList], micsDir)
        if self._serverUrl():
            return self._pickOnServer(micList)
        outDir = os.path.join(batch, 'picks')
        args = ['pick', micsDir,
                '--model', self._getModelFile(),
                '-o', outDir,
                '--format', 'csv',
                '--pixel-size', '%g' % self._getPixelSize()]
        args += ['--' + name.replace('_', '-') for name in self._removedParams()]  # refused by pupick
        if self.threshold.get() is not None:
            args += ['--threshold', '%g' % self.threshold.get()]
        if self.minDistance.get():
            args += ['--min-distance', str(self.minDistance.get())]
        if self.maxPicks.get():
            args += ['--max-picks', str(self.maxPicks.get())]
        if self.modelSource.get() == MODEL_GENERAL:
            args += ['--diameter', '%g' % self.particleDiameter.get()]
        self._runPupick(args + self._deviceArgs() + self._extraArgs())

        groups = splitByKey(readPicks(os.path.join(outDir, 'picks.csv')))
        unknown = set(groups) - {m.getObjId() for m in micList}
        if unknown:
            raise ConvertError('pupick returned picks for micrographs outside this batch (ids %s)'
                               % ', '.join(str(i) for i in sorted(unknown)))
        for mic in micList:
            rows = groups.get(mic.getObjId(), [])
            writeRows(self._getMicCoordsFile(mic), ['x', 'y', 'score'],
                      [(r['x'], r['y'], r['score']) for r in rows])

    def _pickOnServer(self, micList):
        """Pick the batch on a `pupick serve` over HTTP (no pupick in this environment)."""
        client = ServerClient(self._serverUrl(), self.getAttributeValue('tokenFile', '') or None)
        model = client.resolveModel(self._getModelFile())
        settings = {'pixel_size': self._getPixelSize()}
        settings.update((name, True) for name in self._removedParams())  # refused by the server (422)
        if self.threshold.get() is not None:
            settings['threshold'] = self.threshold.get()
        if self.minDistance.get():
            settings['min_distance'] = self.minDistance.get()
        if self.maxPicks.get():
            settings['max_picks'] = self.maxPicks.get()
        if self.modelSource.get() == MODEL_GENERAL:
            settings['diameter'] = self.particleDiameter.get()
        mics = [{'micrograph': str(m.getObjId()), 'path': os.path.abspath(m.getFileName()),
                 'pixel_size': self._getPixelSize()} for m in micList]
        self.info('Picking %d micrograph(s) on the pupick server %s' % (len(mics), client.url))
        picks = client.pick(mics, model, settings, log=self.info)
        for mic in micList:
            writeRows(self._getMicCoordsFile(mic), ['x', 'y', 'score'], picks.get(str(mic.getObjId()), []))

    def readCoordsFromMics(self, outputDir, micDoneList, outputCoords):
        outputCoords.setBoxSize(self._getBoxSize())
        for mic in micDoneList:
            for row in readPicks(self._getMicCoordsFile(mic), needMicrograph=False):
                coord = Coordinate()
                coord.setMicrograph(mic)
                coord.setPosition(int(round(row['x'])), int(round(row['y'])))
                setattr(coord, SCORE_ATTR, Float(row['score']))
                outputCoords.append(coord)

    def getCoordsDir(self):
        return self._getExtraPath('coordinates')

    # --------------------------- INFO ----------------------------------------
    def _validate(self):
        errors = []
        if self.modelSource.get() == MODEL_FROM_FILE:
            path = self.modelFile.get('') or ''
            if not os.path.isfile(path):
                errors.append('Model file %s not found.' % (path or '(empty)'))
            if not self.boxSize.get() and not self.particleDiameter.get():
                errors.append('Give the particle diameter the model was trained for, or a box size.')
        if self.modelSource.get() == MODEL_GENERAL and not self.particleDiameter.get():
            errors.append('The general model needs the particle diameter (Å).')
        mics = self.getInputMicrographs()
        if mics is not None and not mics.getSamplingRate():
            errors.append('The input micrographs have no pixel size.')
        return errors

    def _summary(self):
        summary = ProtParticlePickingAuto._summary(self)
        if self.getInputMicrographs() is not None:
            summary.append('Model: %s' % (self.inputModel.get() if self.modelSource.get() == MODEL_FROM_PROTOCOL
                                          else self._getModelFile()))
            if self._serverUrl():
                summary.append('Picked on the pupick server %s' % self._serverUrl())
        return summary

    def _methods(self):
        methods = ProtParticlePickingAuto._methods(self)
        return methods + ['Particles were picked with pupick [Bepler2019].']

    def _citations(self):
        return ['Bepler2019']

    # --------------------------- UTILS ---------------------------------------
    def _getModelFile(self):
        if self.modelSource.get() == MODEL_FROM_FILE:
            return os.path.abspath(self.modelFile.get())
        if self.modelSource.get() == MODEL_GENERAL:
            return 'general'
        return os.path.abspath(self.inputModel.get().getFileName())

    def _getPixelSize(self):
        return self.getInputMicrographs().getSamplingRate()

    def _getDiameter(self):
        """Particle diameter in Å, or None when unknown."""
        if self.modelSource.get() in (MODEL_FROM_FILE, MODEL_GENERAL):
            return self.particleDiameter.get()
        return self.inputModel.get().getDiameter()

    def _getBoxSize(self):
        if self.boxSize.get():
            return self.boxSize.get()
        return boxSizeRule(self._getDiameter() / self._getPixelSize())

    def _getMicCoordsFile(self, mic):
        return os.path.join(self.getCoordsDir(), 'mic_%06d.csv' % mic.getObjId())
