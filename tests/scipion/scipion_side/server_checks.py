"""The pupick pick protocol in server mode: real Scipion talking HTTP to a real `pupick serve` (unittest side).

Environment (set by tests/scipion/test_scipion_server.py), besides the usual ones: PUPICK_SERVER_URL (the server),
PUPICK_SERVER_TOKEN (its token file), PUPICK_DOWN_URL (a port nothing listens on); PUPICK points nowhere, so
any local pupick call would fail.
"""
import csv
import os
import time
import unittest

import pyworkflow.protocol as pwprot
import pyworkflow.tests as pwtests
import pwem.protocols as emprot

from pupick_scipion.constants import SCORE_ATTR
from pupick_scipion.convert import stem
from pupick_scipion.protocols import ProtPupickPick

DEMO = os.environ['PUPICK_DEMO_DIR']
OUT = os.environ['PUPICK_TEST_OUT']
PIXEL_SIZE = 5.36
DIAMETER_A = 300.0
GENERAL = 2  # modelSource: the shipped general model


class TestPupickServer(pwtests.BaseTest):
    @classmethod
    def setUpClass(cls):
        config = os.path.join(os.environ['SCIPION_HOME'], 'config')
        os.makedirs(config, exist_ok=True)
        pwprot.HostConfig.writeBasic(os.path.join(config, 'hosts.conf'))
        pwtests.setupTestProject(cls)
        cls.importMics = cls.newProtocol(emprot.ProtImportMicrographs,
                                         filesPath=os.path.join(DEMO, 'micrographs'), filesPattern='*.mrc',
                                         samplingRate=PIXEL_SIZE, voltage=300)
        cls.launchProtocol(cls.importMics)

    def newPick(self, **kw):
        pick = self.newProtocol(ProtPupickPick, modelSource=GENERAL, particleDiameter=DIAMETER_A, useGpu=False,
                                **kw)
        pick.inputMicrographs.set(self.importMics)
        pick.inputMicrographs.setExtended('outputMicrographs')
        return pick

    def test_a_pick_on_the_server_with_the_general_model(self):
        self.assertNotEqual(self.newPick().validate(), [])  # no server, no pupick here: refused up front
        pick = self.newPick(serverUrl=os.environ['PUPICK_SERVER_URL'], tokenFile=os.environ['PUPICK_SERVER_TOKEN'])
        self.assertEqual(pick.validate(), [])
        self.launchProtocol(pick)
        rows = sorted((stem(c.getMicName()), c.getX(), c.getY(), getattr(c, SCORE_ATTR).get())
                      for c in pick.outputCoordinates.iterCoordinates())
        self.assertTrue(rows)
        self.assertIn('Picked on the pupick server', '\n'.join(pick.summary()))
        with open(os.path.join(OUT, 'picks_server.csv'), 'w', newline='') as fh:
            writer = csv.writer(fh)
            writer.writerow(['micrograph', 'x', 'y', 'score'])
            writer.writerows(rows)

    def failWith(self, **kw):
        pick = self.newPick(**kw)
        start = time.time()
        self.proj.launchProtocol(pick, wait=True)
        self.assertTrue(pick.isFailed())
        self.assertLess(time.time() - start, 60)
        message = pick.getErrorMessage()
        self.assertNotIn('Traceback', message)
        return message

    def test_b_server_down_is_one_line(self):
        message = self.failWith(serverUrl=os.environ['PUPICK_DOWN_URL'])
        self.assertIn('cannot reach the pupick server at %s (connection refused)' % os.environ['PUPICK_DOWN_URL'],
                      message)

    def test_b_no_token_is_one_line(self):
        message = self.failWith(serverUrl=os.environ['PUPICK_SERVER_URL'])
        self.assertIn('refused the token (401)', message)


if __name__ == '__main__':
    unittest.main()
