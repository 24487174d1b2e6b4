"""Train a pupick model from a few picked particles."""
import csv
import enum
import math
import os

import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol

from ..constants import ARCHITECTURES, DEFAULT_ARCHITECTURE, OBJECTIVES
from ..convert import ConvertError, linkMicrographs, micKey, writeRows
from ..objects import PupickModel
from .common import PupickProtocolMixin, addExtraParams, addGpuParams

INFO = 'labels_info.json'


class PupickTrainOutputs(enum.Enum):
    outputModel = PupickModel


class ProtPupickTrain(PupickProtocolMixin, EMProtocol):
    """Train a pupick CNN from a few hand-picked particles by positive-unlabeled learning
    (Bepler et al. 2019): the labeled positions are positives, every other pixel is unlabeled
    (not negative), so incomplete picking is expected and fine. Micrographs without any label
    are used as unlabeled data."""
    _label = 'train'
    _possibleOutputs = PupickTrainOutputs

    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputMicrographs', params.PointerParam, pointerClass='SetOfMicrographs',
                      important=True, label='Input micrographs',
                      help='Micrographs to train on. Those without labeled particles are used as unlabeled '
                           'data. A fraction of them is held out for validation (see Test split).')
        form.addParam('inputCoordinates', params.PointerParam, pointerClass='SetOfCoordinates',
                      important=True, label='Labeled particles',
                      help='A few hundred picked particles on some of the micrographs. They need not be '
                           'complete: unpicked particles are not taken as negatives.')
        form.addParam('particleDiameter', params.FloatParam, validators=[params.Positive],
                      important=True, label='Particle diameter (Å)',
                      help='Sets the downsampling (the particle becomes 20-40 px across), the default '
                           'distance between picks and the default box size when picking.')
        form.addParam('expectedParticles', params.IntParam, default=0, validators=[params.GE(0)],
                      label='Expected particles per micrograph',
                      help='Roughly how many particles a micrograph holds (labeled or not); it sets the '
                           'positive fraction the PU objective expects. 0: let pupick decide.')

        form.addSection(label='Training')
        form.addParam('arch', params.EnumParam, choices=ARCHITECTURES,
                      default=ARCHITECTURES.index(DEFAULT_ARCHITECTURE), label='Architecture',
                      help='resnet8 (receptive field 71 px after downsampling) is fast and usually enough; '
                           'resnet8n, with half the channels in its middle blocks, trains in about 0.6x the time.')
        form.addParam('objective', params.EnumParam, choices=OBJECTIVES, default=0,
                      label='Objective',
                      help='ge-binomial: generalized-expectation criterion (default); ge-kl; nnpu: '
                           'non-negative PU; pn: treat unlabeled pixels as negatives.')
        form.addParam('initGeneral', params.BooleanParam, default=False,
                      label='Start from the general model?',
                      help='Fine-tune the general model shipped with pupick instead of training from scratch.')
        form.addParam('epochs', params.IntParam, default=6, validators=[params.Positive],
                      label='Epochs')
        form.addParam('testSplit', params.FloatParam, default=0.0, validators=[params.Range(0, 0.9)],
                      label='Test split',
                      help='Fraction of the micrographs held out to measure AP after each epoch; the best '
                           'epoch is kept. 0 (default): no validation, keep the last epoch; with few labeled '
                           'micrographs a validation micrograph costs more than it gains.')
        form.addParam('seed', params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label='Random seed', help='Same seed, same model.')
        addExtraParams(form, 'train')
        addGpuParams(form)

    # --------------------------- STEPS ---------------------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, needsGPU=False)
        self._insertFunctionStep(self.trainStep, needsGPU=True)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self):
        """Link the micrographs under unique names and write the labels as CSV."""
        micSet = self.inputMicrographs.get()
        mics = [(m.getObjId(), m.getMicName(), m.getFileName()) for m in micSet]
        linkMicrographs([(i, f) for i, _, f in mics], self._getMicsDir())
        byName = {name: micKey(i, f) for i, name, f in mics if name}
        byId = {i: micKey(i, f) for i, _, f in mics}

        rows, skipped, labeledMics = [], {}, set()
        for coord in self.inputCoordinates.get().iterItems():
            name = coord.getMicName()
            key = byName.get(name) if name else byId.get(coord.getMicId())
            if key is None:
                skipped[name or coord.getMicId()] = skipped.get(name or coord.getMicId(), 0) + 1
                continue
            rows.append((key, coord.getX(), coord.getY()))
            labeledMics.add(key)
        if not rows:
            raise ConvertError('none of the labeled particles lies on the input micrographs: the particles are '
                               'on %s; the micrographs are e.g. %s'
                               % (', '.join(repr(str(k)) for k in list(skipped)[:3]) or 'nothing',
                                  ', '.join(repr(n) for _, n, _ in mics[:3])))
        writeRows(self._getLabelsFile(), ['micrograph', 'x', 'y'], rows)
        self._writeInfo(INFO, {'labels': len(rows), 'labeledMicrographs': len(labeledMics),
                               'micrographs': len(mics), 'skipped': sum(skipped.values())})

    def trainStep(self):
        micSet = self.inputMicrographs.get()
        args = ['train', self._getMicsDir(),
                '--labels', self._getLabelsFile(),
                '-o', self._getModelFile(),
                '--diameter', '%g' % self.particleDiameter.get(),
                '--pixel-size', '%g' % micSet.getSamplingRate(),
                '--arch', ARCHITECTURES[self.arch.get()],
                '--objective', OBJECTIVES[self.objective.get()],
                '--epochs', str(self.epochs.get()),
                '--test-split', '%g' % self.testSplit.get(),
                '--seed', str(self.seed.get())]
        if self.expectedParticles.get():
            args += ['--expected-particles', str(self.expectedParticles.get())]
        if self.initGeneral.get():
            args += ['--init', 'general']
        self._runPupick(args + self._deviceArgs() + self._extraArgs())

    def createOutputStep(self):
        modelFile = self._getModelFile()
        if not os.path.exists(modelFile):
            raise ConvertError('%s: pupick train finished without writing the model' % modelFile)
        model = PupickModel(filename=modelFile,
                            diameter=self.particleDiameter.get(),
                            pixelSize=self.inputMicrographs.get().getSamplingRate(),
                            arch=ARCHITECTURES[self.arch.get()],
                            objective=OBJECTIVES[self.objective.get()],
                            epochs=self.epochs.get(),
                            bestAp=bestValidationAp(os.path.splitext(modelFile)[0] + '.train.tsv'))
        self._defineOutputs(**{PupickTrainOutputs.outputModel.name: model})
        self._defineSourceRelation(self.inputMicrographs, model)
        self._defineSourceRelation(self.inputCoordinates, model)

    # --------------------------- INFO ----------------------------------------
    def _validate(self):
        errors = []
        mics = self.inputMicrographs.get()
        if mics is not None and not mics.getSamplingRate():
            errors.append('The input micrographs have no pixel size.')
        elif mics is not None and self.particleDiameter.get():
            diameterPx = self.particleDiameter.get() / mics.getSamplingRate()
            if diameterPx < 4:
                errors.append('A %g Å particle is only %.1f px across at %g Å/px: check the diameter.'
                              % (self.particleDiameter.get(), diameterPx, mics.getSamplingRate()))
        return errors

    def _summary(self):
        lines = []
        info = self._readInfo(INFO)
        if info:
            lines.append('%d labeled particles on %d of %d micrographs.'
                         % (info['labels'], info['labeledMicrographs'], info['micrographs']))
            if info['skipped']:
                lines.append('%d labeled particles skipped: not on the input micrographs.' % info['skipped'])
        if hasattr(self, 'outputModel'):
            lines.append('Model: %s' % self.outputModel)
        else:
            lines.append('Model not ready yet.')
        return lines

    def _methods(self):
        if not hasattr(self, 'outputModel'):
            return []
        info = self._readInfo(INFO) or {}
        return ['A %s network was trained with pupick [Bepler2019] on %s micrographs from %s labeled '
                'particles (%s objective, %d epochs, particle diameter %g Å).'
                % (ARCHITECTURES[self.arch.get()], info.get('micrographs', '?'), info.get('labels', '?'),
                   OBJECTIVES[self.objective.get()], self.epochs.get(), self.particleDiameter.get())]

    def _citations(self):
        return ['Bepler2019']

    # --------------------------- UTILS ---------------------------------------
    def _getMicsDir(self):
        return self._getExtraPath('micrographs')

    def _getLabelsFile(self):
        return self._getExtraPath('labels.csv')

    def _getModelFile(self):
        return self._getExtraPath('model.pt')


def bestValidationAp(tsvPath):
    """Best per-epoch validation AP recorded by `pupick train`, or None when there is none."""
    if not os.path.exists(tsvPath):
        return None
    with open(tsvPath, newline='') as fh:
        reader = csv.DictReader(fh, delimiter='\t')
        column = next((c for c in (reader.fieldnames or []) if c.lower() in ('ap', 'val_ap', 'test_ap')), None)
        if column is None:
            return None
        values = []
        for rec in reader:
            try:
                value = float(rec[column])
            except (TypeError, ValueError):
                continue
            if not math.isnan(value):
                values.append(value)
    return max(values) if values else None
