"""Real Scipion workflow with the pupick protocols: runs in the Scipion virtualenv (unittest), not in pytest.

Environment (set by tests/scipion/test_scipion_plugin.py): SCIPION_HOME, SCIPION_USER_DATA, SCIPION_DOMAIN=pwem,
SCIPION_PYTHON, PUPICK (the pupick executable), PUPICK_DEMO_DIR (bundled data), PUPICK_TEST_OUT (where the picks
are exported for the AP check on the pytest side), PUPICK_REMOVED_LINE (pupick's refusal of the removed --bootstrap).
"""
import csv
import math
import os
import shutil
import time
import unittest

import pyworkflow.protocol as pwprot
import pyworkflow.tests as pwtests
from pyworkflow.object import Boolean, Set
import pwem.protocols as emprot

from pupick_scipion.constants import SCORE_ATTR
from pupick_scipion.convert import boxSizeRule, stem
from pupick_scipion.protocols import ProtPupickImportCoordinates, ProtPupickPick, ProtPupickTrain

DEMO = os.environ['PUPICK_DEMO_DIR']
OUT = os.environ['PUPICK_TEST_OUT']
PIXEL_SIZE = 5.36  # nominal, DATA.md; the MRC headers say 0
DIAMETER_A = 300.0  # 56 px
MICS = sorted(f for f in os.listdir(os.path.join(DEMO, 'micrographs')) if f.endswith('.mrc'))
TIMEOUT = 240
TRAIN_EXTRA = '--units 16 --steps-per-epoch 10 --tile-size 128 --batch-size 4 --learning-rate 1e-3'


def readLabels():
    with open(os.path.join(DEMO, 'particles.csv'), newline='') as fh:
        return list(csv.DictReader(fh))


def pointTo(prot, attr, source, outputName):
    """Point an input of prot at source.outputName (an extended pointer, safe in streaming)."""
    pointer = getattr(prot, attr)
    pointer.set(source)
    pointer.setExtended(outputName)
    return prot


def exportPicks(coordSet, path):
    """Write a Scipion SetOfCoordinates as a pick table (micrograph stem, x, y, score)."""
    rows = [(stem(c.getMicName()), c.getX(), c.getY(), getattr(c, SCORE_ATTR).get())
            for c in coordSet.iterCoordinates()]
    rows.sort()
    with open(path, 'w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(['micrograph', 'x', 'y', 'score'])
        writer.writerows(rows)
    return rows


# What RELION 3.1+ writes for a particles STAR after picking on motion-corrected micrographs
RELION_PARTICLES = '''
# version 30001

data_optics

loop_ 
_rlnOpticsGroupName #1 
_rlnOpticsGroup #2 
_rlnMicrographOriginalPixelSize #3 
_rlnVoltage #4 
_rlnSphericalAberration #5 
_rlnAmplitudeContrast #6 
_rlnImagePixelSize #7 
_rlnImageSize #8 
_rlnImageDimensionality #9 
opticsGroup1            1     5.360000   300.000000     2.700000     0.100000     5.360000           84            2 
 

# version 30001

data_particles

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnAutopickFigureOfMerit #3 
_rlnMicrographName #4 
_rlnOpticsGroup #5 
   535.000000   920.000000     1.250000 MotionCorr/job002/Movies/061_10028.mrc            1 
   416.000000   256.000000     0.500000 MotionCorr/job002/Movies/061_10028.mrc            1 
   100.000000   200.000000    -0.750000 MotionCorr/job002/Movies/062_10028.mrc            1 
   512.000000  1500.000000     0.100000 MotionCorr/job002/Movies/062_10028.mrc            1 
   300.000000   300.000000     0.200000 MotionCorr/job002/Movies/999_other.mrc            1 
'''


class TestPupickWorkflow(pwtests.BaseTest):
    @classmethod
    def setUpClass(cls):
        start = time.time()
        config = os.path.join(os.environ['SCIPION_HOME'], 'config')
        os.makedirs(config, exist_ok=True)
        pwprot.HostConfig.writeBasic(os.path.join(config, 'hosts.conf'))
        pwtests.setupTestProject(cls)
        cls.importMics = cls.newProtocol(emprot.ProtImportMicrographs,
                                         filesPath=os.path.join(DEMO, 'micrographs'), filesPattern='*.mrc',
                                         samplingRate=PIXEL_SIZE, voltage=300)
        cls.launchProtocol(cls.importMics)
        cls.importCoords = cls.newProtocol(ProtPupickImportCoordinates,
                                           filesPath=os.path.join(DEMO, 'particles.csv'), boxSize=84)
        pointTo(cls.importCoords, 'inputMicrographs', cls.importMics, 'outputMicrographs')
        cls.launchProtocol(cls.importCoords)
        # a small, fast model (the training quality itself is tested in tests/core)
        cls.train = cls.newProtocol(ProtPupickTrain, particleDiameter=DIAMETER_A, expectedParticles=150,
                                    epochs=2, testSplit=0.2, useGpu=False,
                                    extraParams=TRAIN_EXTRA)
        pointTo(cls.train, 'inputMicrographs', cls.importMics, 'outputMicrographs')
        pointTo(cls.train, 'inputCoordinates', cls.importCoords, 'outputCoordinates')
        cls.launchProtocol(cls.train)
        with open(os.path.join(OUT, 'setup_seconds.txt'), 'w') as fh:
            fh.write('%.1f\n' % (time.time() - start))

    # ---------------------------------------------------------------- helpers
    def waitFor(self, what, condition, timeout=TIMEOUT):
        """Poll until condition() is true; fail (never hang) after timeout seconds."""
        end = time.time() + timeout
        while time.time() < end:
            if condition():
                return
            time.sleep(1)
        self.fail('timed out after %d s waiting for %s' % (timeout, what))

    def refresh(self, prot):
        self.proj._updateProtocol(prot)
        return prot

    def launchFailing(self, prot):
        self.proj.launchProtocol(prot, wait=True)
        self.assertTrue(prot.isFailed(), 'protocol %s should have failed' % prot.getRunName())
        return prot.getErrorMessage()

    def checkPicks(self, coords, micSet):
        self.assertEqual(coords.getBoxSize(), boxSizeRule(DIAMETER_A / PIXEL_SIZE))
        self.assertEqual(coords.getBoxSize(), 84)
        perMic = {}
        for c in coords.iterCoordinates():
            perMic[c.getMicName()] = perMic.get(c.getMicName(), 0) + 1
            self.assertTrue(0 <= c.getX() < 1024 and 0 <= c.getY() < 1024)
            score = getattr(c, SCORE_ATTR)
            self.assertTrue(math.isfinite(score.get()))
        self.assertEqual(sorted(perMic), sorted(m.getMicName() for m in micSet))
        # the bundled micrographs hold ~100-250 particles each
        for name, n in perMic.items():
            self.assertTrue(20 <= n <= 2000, '%s: %d picks' % (name, n))

    # ---------------------------------------------------------------- checks
    def test_a_import_coordinates(self):
        coords = self.importCoords.outputCoordinates
        labels = readLabels()
        self.assertEqual(coords.getSize(), len(labels))
        self.assertEqual(coords.getBoxSize(), 84)
        counts = {}
        for c in coords.iterCoordinates():
            counts[stem(c.getMicName())] = counts.get(stem(c.getMicName()), 0) + 1
        expected = {}
        for row in labels:
            expected[row['micrograph']] = expected.get(row['micrograph'], 0) + 1
        self.assertEqual(counts, expected)
        first = next(iter(coords.iterCoordinates()))
        self.assertEqual((first.getX(), first.getY()), (int(float(labels[0]['x'])), int(float(labels[0]['y']))))

    def test_a_import_relion_star_with_scores(self):
        folder = os.path.join(OUT, 'relion')
        os.makedirs(folder)
        with open(os.path.join(folder, 'particles.star'), 'w') as fh:
            fh.write(RELION_PARTICLES)
        with open(os.path.join(folder, 'notes.txt'), 'w') as fh:
            fh.write('not coordinates\n')
        prot = self.newProtocol(ProtPupickImportCoordinates, filesPath=folder, filesPattern='*.star', boxSize=84)
        pointTo(prot, 'inputMicrographs', self.importMics, 'outputMicrographs')
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        coords = prot.outputCoordinates
        got = sorted((stem(c.getMicName()), c.getX(), c.getY(), getattr(c, SCORE_ATTR).get())
                     for c in coords.iterCoordinates())
        # the picks on a micrograph outside the set and outside the image are dropped, and counted
        self.assertEqual(got, [('061_10028', 416, 256, 0.5), ('061_10028', 535, 920, 1.25),
                               ('062_10028', 100, 200, -0.75)])
        summary = ' '.join(prot.summary())
        self.assertIn('1 coordinates skipped: their micrographs (e.g. 999_other) are not in the input set', summary)
        self.assertIn('1 coordinates skipped: outside the micrograph', summary)

    def test_b_train_output(self):
        model = self.train.outputModel
        self.assertTrue(os.path.isfile(model.getFileName()))
        self.assertAlmostEqual(model.getDiameter(), DIAMETER_A)
        self.assertAlmostEqual(model.getPixelSize(), PIXEL_SIZE)
        self.assertEqual(model.getArch(), 'resnet8')
        self.assertEqual(model.getObjective(), 'ge-binomial')
        self.assertTrue(0 <= model.getBestAp() <= 1, model.getBestAp())  # validation AP from model.train.tsv
        labels = os.path.join(self.train._getExtraPath('labels.csv'))
        with open(labels) as fh:
            self.assertEqual(sum(1 for _ in fh) - 1, len(readLabels()))
        summary = '\n'.join(self.train.summary())
        self.assertIn('430 labeled particles on 5 of 5 micrographs.', summary)
        self.assertIn('Model: PupickModel (resnet8, 300 Å particles, validation AP 0.', summary)
        methods = '\n'.join(self.train.methods())
        self.assertIn('A resnet8 network was trained with pupick', methods)
        self.assertIn('Bepler', methods)  # the [Bepler2019] citation, resolved from bibtex.py
        again = self.newProtocol(ProtPupickTrain, particleDiameter=DIAMETER_A, useGpu=False)
        pointTo(again, 'inputMicrographs', self.importMics, 'outputMicrographs')
        pointTo(again, 'inputCoordinates', self.importCoords, 'outputCoordinates')
        self.assertEqual(again.validate(), [])
        tiny = self.newProtocol(ProtPupickTrain, particleDiameter=10.0, useGpu=False)
        pointTo(tiny, 'inputMicrographs', self.importMics, 'outputMicrographs')
        pointTo(tiny, 'inputCoordinates', self.importCoords, 'outputCoordinates')
        self.assertTrue(any('only 1.9 px across' in e for e in tiny.validate()), tiny.validate())

    def test_c_pick_closed_set(self):
        pick = self.newProtocol(ProtPupickPick, useGpu=False)
        pointTo(pick, 'inputMicrographs', self.importMics, 'outputMicrographs')
        pointTo(pick, 'inputModel', self.train, 'outputModel')
        self.assertEqual(pick.streamingBatchSize.get(), 0)  # default: one pupick call per available batch
        self.assertEqual(pick.validate(), [])
        self.launchProtocol(pick)
        summary = '\n'.join(pick.summary())
        self.assertIn('Particle size: 84', summary)
        self.assertIn('Model: PupickModel (resnet8', summary)
        self.assertIn('Particles were picked with pupick', '\n'.join(pick.methods()))
        coords = pick.outputCoordinates
        self.assertTrue(coords.isStreamClosed())
        self.checkPicks(coords, self.importMics.outputMicrographs)
        exportPicks(coords, os.path.join(OUT, 'picks_closed.csv'))
        # the pupick tables behind the output: one per micrograph
        self.assertEqual(len(os.listdir(pick._getExtraPath('coordinates'))), len(MICS))

    def test_d_pick_streaming(self):
        streamDir = os.path.join(OUT, 'stream')
        os.makedirs(streamDir)
        first, rest = MICS[:3], MICS[3:]
        for name in first:  # copy2 keeps the old mtime: the import takes the files at once
            shutil.copy2(os.path.join(DEMO, 'micrographs', name), streamDir)
        importStream = self.newProtocol(emprot.ProtImportMicrographs, filesPath=streamDir, filesPattern='*.mrc',
                                        samplingRate=PIXEL_SIZE, voltage=300, dataStreaming=True,
                                        fileTimeout='1', timeout='600')
        self.proj.launchProtocol(importStream, wait=False)
        self.waitFor('the first streamed micrographs',
                     lambda: self.refresh(importStream).hasAttribute('outputMicrographs'))

        pick = self.newProtocol(ProtPupickPick, useGpu=False)
        pointTo(pick, 'inputMicrographs', importStream, 'outputMicrographs')
        pointTo(pick, 'inputModel', self.train, 'outputModel')
        self.proj.launchProtocol(pick, wait=False)
        self.waitFor('coordinates of the first batch',
                     lambda: self.refresh(pick).hasAttribute('outputCoordinates') or pick.isFailed())
        self.assertFalse(pick.isFailed(), pick.getErrorMessage())
        # while the input is open, the output is an open set holding only what has been picked so far
        self.assertEqual(pick.outputCoordinates.getStreamState(), Set.STREAM_OPEN)
        pickedSoFar = {c.getMicName() for c in pick.outputCoordinates.iterCoordinates()}
        self.assertTrue(pickedSoFar and pickedSoFar <= set(first), pickedSoFar)

        for name in rest:  # the microscope delivers more micrographs
            shutil.copy2(os.path.join(DEMO, 'micrographs', name), streamDir)
        self.waitFor('all micrographs imported',
                     lambda: self.refresh(importStream).outputMicrographs.getSize() == len(MICS))
        open(importStream._getStopStreamingFilename(), 'w').close()  # the session ends: close the input
        self.waitFor('the streaming import to close', lambda: not self.refresh(importStream).isActive())
        self.waitFor('the streaming pick to finish', lambda: not self.refresh(pick).isActive())
        self.assertTrue(pick.isFinished(), pick.getErrorMessage())

        coords = pick.outputCoordinates
        self.assertTrue(coords.isStreamClosed())
        self.checkPicks(coords, importStream.outputMicrographs)
        rows = exportPicks(coords, os.path.join(OUT, 'picks_stream.csv'))
        # batches picked in streaming give exactly the picks of the closed run
        closedFile = os.path.join(OUT, 'picks_closed.csv')
        if os.path.exists(closedFile):
            with open(closedFile, newline='') as fh:
                closed = [(r['micrograph'], int(r['x']), int(r['y']), float(r['score']))
                          for r in csv.DictReader(fh)]
            self.assertEqual([r[:3] for r in rows], [r[:3] for r in closed])
            for a, b in zip(rows, closed):
                self.assertAlmostEqual(a[3], b[3], places=3)

    def test_e_subprocess_failure_surfaces_in_the_error_message(self):
        bad = os.path.join(OUT, 'not_a_model.pt')
        with open(bad, 'wb') as fh:
            fh.write(b'this is not a model file\n' * 10)
        pick = self.newProtocol(ProtPupickPick, modelSource=1, modelFile=bad, particleDiameter=DIAMETER_A,
                                useGpu=False)
        pointTo(pick, 'inputMicrographs', self.importMics, 'outputMicrographs')
        start = time.time()
        message = self.launchFailing(pick)
        self.assertLess(time.time() - start, 60)
        self.assertIn('pupick pick failed (exit status 1)', message)
        self.assertIn('not_a_model.pt', message)
        self.assertIn('pupick: error:', message)

    def test_e_removed_parameter_fails_at_the_start_with_pupicks_line(self):
        # a saved protocol from a plugin that had `bootstrap`, and `--bootstrap` among the additional arguments
        expected = os.environ['PUPICK_REMOVED_LINE']
        saved = self.newProtocol(ProtPupickPick, modelSource=2, particleDiameter=DIAMETER_A, useGpu=False)
        saved.bootstrap = Boolean(True)  # stored with the protocol, read back by the run
        extra = self.newProtocol(ProtPupickPick, modelSource=2, particleDiameter=DIAMETER_A, useGpu=False,
                                 extraParams='--bootstrap')
        for pick in (saved, extra):
            pointTo(pick, 'inputMicrographs', self.importMics, 'outputMicrographs')
            start = time.time()
            message = self.launchFailing(pick)
            self.assertLess(time.time() - start, 60)
            self.assertIn('pupick pick failed (exit status 2)', message)
            self.assertIn(expected, message)
            self.assertFalse(self.refresh(pick).hasAttribute('outputCoordinates'))

    def test_e_gpu_slot_reaches_pupick(self):
        # Scipion's GPU list goes to pupick through the %(GPU)s slot; no machine has a GPU with id 97
        pick = self.newProtocol(ProtPupickPick, useGpu=True, gpuList='97')
        pointTo(pick, 'inputMicrographs', self.importMics, 'outputMicrographs')
        pointTo(pick, 'inputModel', self.train, 'outputModel')
        message = self.launchFailing(pick)
        self.assertIn('pupick pick failed', message)
        self.assertIn('cuda:97', message)

    def test_f_import_failure_names_both_sides(self):
        labels = os.path.join(OUT, 'foreign.csv')
        with open(labels, 'w') as fh:
            fh.write('micrograph,x,y\nother_sample_001,10,10\nother_sample_002,20,20\n')
        prot = self.newProtocol(ProtPupickImportCoordinates, filesPath=labels, boxSize=84)
        pointTo(prot, 'inputMicrographs', self.importMics, 'outputMicrographs')
        missing = self.newProtocol(ProtPupickImportCoordinates, filesPath=os.path.join(OUT, 'nowhere'),
                                   filesPattern='*.star', boxSize=84)
        pointTo(missing, 'inputMicrographs', self.importMics, 'outputMicrographs')
        self.assertTrue(any('No coordinate files found' in e for e in missing.validate()), missing.validate())
        message = self.launchFailing(prot)
        self.assertIn('other_sample_001', message)
        self.assertIn('061_10028', message)

    def test_g_missing_pupick_is_reported_before_running(self):
        import pupick_scipion
        plugin = pupick_scipion.Plugin
        saved = dict(plugin._vars)
        try:
            plugin._vars['PUPICK'] = '/nonexistent/bin/pupick'
            prot = self.newProtocol(ProtPupickTrain, particleDiameter=DIAMETER_A, useGpu=False)
            pointTo(prot, 'inputMicrographs', self.importMics, 'outputMicrographs')
            pointTo(prot, 'inputCoordinates', self.importCoords, 'outputCoordinates')
            errors = prot.validate()
        finally:
            plugin._vars.clear()
            plugin._vars.update(saved)
        self.assertTrue(any('/nonexistent/bin/pupick' in e for e in errors), errors)


if __name__ == '__main__':
    unittest.main()
