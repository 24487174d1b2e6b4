"""Import particle coordinates from any format `pupick convert` reads."""
import glob
import math
import os
from collections import Counter

import pyworkflow.protocol.params as params
from pyworkflow.object import Float
from pwem.objects import Coordinate
from pwem.protocols import ProtParticlePicking

from ..constants import LABEL_FORMATS, SCORE_ATTR
from ..convert import ConvertError, MicrographMatcher, readPicks
from .common import PupickProtocolMixin, addExtraParams

INFO = 'import_info.json'


class ProtPupickImportCoordinates(PupickProtocolMixin, ProtParticlePicking):
    """Import particle coordinates (e.g. hand-picked training labels) from RELION STAR, cryoSPARC .cs,
    EMAN .box, Topaz or CSV/TSV files, converted by `pupick convert` and matched to the micrographs
    by name (directories and image extensions ignored; cryoSPARC uid prefixes and motion-correction
    suffixes tolerated)."""
    _label = 'import coordinates'

    def _defineParams(self, form):
        ProtParticlePicking._defineParams(self, form)
        form.addParam('filesPath', params.PathParam, important=True,
                      label='Coordinate file or folder',
                      help='One coordinate file (a particle STAR file, a RELION coordinate list, a cryoSPARC '
                           'particles .cs, a CSV table...) or a folder of per-micrograph files.')
        form.addParam('filesPattern', params.StringParam, default='',
                      label='Pattern',
                      help='With a folder: the files to take, e.g. *.star or *_autopick.star. '
                           'Empty: every file in the folder.')
        form.addParam('labelFormat', params.EnumParam, choices=LABEL_FORMATS, default=0,
                      label='Format',
                      help='auto: decided by pupick from the file extension. star: RELION (3.0 to 5: '
                           'particles, per-micrograph coordinates or coordinate lists); cs: cryoSPARC '
                           'particles; box: EMAN .box; eman2: EMAN2 _info.json; topaz: Topaz TSV; '
                           'csv/tsv: micrograph,x,y[,score] tables.')
        form.addParam('scale', params.FloatParam, default=1.0, validators=[params.Positive],
                      label='Scale factor',
                      help='Multiply the coordinates by this factor, e.g. 2 for picks made on micrographs '
                           'binned by 2 and imported onto the unbinned ones.')
        form.addParam('boxSize', params.IntParam, validators=[params.Positive],
                      label='Box size (px)',
                      help='Box size recorded on the output coordinates, in pixels of the input micrographs.')
        addExtraParams(form, 'convert')

    # --------------------------- STEPS ---------------------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertStep, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertStep(self):
        files = self._inputFiles()
        if not files:
            raise ConvertError('no coordinate files found at %s' % self._inputDescription())
        args = ['convert'] + files + ['-o', self._getLabelsFile(), '--to', 'csv', '--force']
        fmt = LABEL_FORMATS[self.labelFormat.get()]
        if fmt != 'auto':
            args += ['--from', fmt]
        if self.scale.get() != 1:
            args += ['--coord-factor', str(self.scale.get())]
        self._runPupick(args + self._extraArgs())

    def createOutputStep(self):
        rows = readPicks(self._getLabelsFile())
        micSet = self.getInputMicrographs()
        mics = {mic.getObjId(): mic.clone() for mic in micSet}
        matcher = MicrographMatcher((i, m.getMicName(), m.getFileName()) for i, m in mics.items())
        width, height = (micSet.getDim() or (None, None))[:2]

        coordSet = self._createSetOfCoordinates(self.getInputMicrographsPointer())
        coordSet.setBoxSize(self.boxSize.get())
        withScore = any(r['score'] is not None for r in rows)
        unmatched, outside, used = Counter(), 0, Counter()
        for row in rows:
            micId = matcher.match(row['micrograph'])
            if micId is None:
                unmatched[row['micrograph']] += 1
                continue
            x, y = int(round(row['x'])), int(round(row['y']))
            if width and height and not (0 <= x < width and 0 <= y < height):
                outside += 1
                continue
            coord = Coordinate()
            coord.setMicrograph(mics[micId])
            coord.setPosition(x, y)
            if withScore:
                setattr(coord, SCORE_ATTR, Float(row['score'] if row['score'] is not None else math.nan))
            coordSet.append(coord)
            used[micId] += 1

        if not used:
            raise ConvertError('none of the %d coordinates belongs to an input micrograph: the files name %s; '
                               'the micrographs are e.g. %s'
                               % (len(rows), ', '.join(repr(n) for n in list(unmatched)[:3]) or 'none',
                                  ', '.join(repr(n) for n in matcher.examples)))
        self._writeInfo(INFO, {'rows': len(rows), 'imported': sum(used.values()), 'micrographs': len(used),
                               'unmatched': sum(unmatched.values()),
                               'unmatchedNames': sorted(unmatched)[:5], 'outside': outside})
        coordSet.setObjComment(self.getSummary(coordSet))
        self._defineOutputs(outputCoordinates=coordSet)
        self._defineSourceRelation(self.getInputMicrographsPointer(), coordSet)

    # --------------------------- INFO ----------------------------------------
    def _validate(self):
        errors = []
        if not self._inputFiles():
            errors.append('No coordinate files found at %s.' % self._inputDescription())
        return errors

    def _summary(self):
        info = self._readInfo(INFO)
        if info is None:
            return ['Output coordinates not ready yet.']
        lines = ['%d coordinates imported on %d micrographs from %s.'
                 % (info['imported'], info['micrographs'], self._inputDescription())]
        if info['unmatched']:
            lines.append('%d coordinates skipped: their micrographs (e.g. %s) are not in the input set.'
                         % (info['unmatched'], ', '.join(info['unmatchedNames'])))
        if info['outside']:
            lines.append('%d coordinates skipped: outside the micrograph.' % info['outside'])
        return lines

    def _methods(self):
        if not hasattr(self, 'outputCoordinates'):
            return []
        return ['%d particle coordinates were imported with pupick [Bepler2019] from %s.'
                % (self.outputCoordinates.getSize(), os.path.basename(self.filesPath.get('')))]

    def _citations(self):
        return ['Bepler2019']

    # --------------------------- UTILS ---------------------------------------
    def _getLabelsFile(self):
        return self._getExtraPath('coordinates.csv')

    def _inputDescription(self):
        path = self.filesPath.get('') or ''
        pattern = (self.filesPattern.get('') or '').strip()
        return os.path.join(path, pattern) if pattern and os.path.isdir(path) else path

    def _inputFiles(self):
        """The coordinate files named by the form, sorted."""
        path = os.path.expanduser((self.filesPath.get('') or '').strip())
        if not path:
            return []
        if os.path.isdir(path):
            pattern = (self.filesPattern.get('') or '').strip() or '*'
            return sorted(f for f in glob.glob(os.path.join(path, pattern)) if os.path.isfile(f))
        if any(c in path for c in '*?['):
            return sorted(f for f in glob.glob(path) if os.path.isfile(f))
        return [path] if os.path.isfile(path) else []
