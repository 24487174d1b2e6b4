"""Scipion-side unit checks of the pupick plugin: runs in the Scipion virtualenv (unittest), not in pytest."""
import configparser
import importlib.metadata
import json
import os
import sys
import tempfile
import unittest

from pwem import Domain

import pupick_scipion
from pupick_scipion import runner
from pupick_scipion.constants import PUPICK_ACTIVATION_VAR, PUPICK_VAR
from pupick_scipion.convert import (ConvertError, MicrographMatcher, boxSizeRule, linkMicrographs, micIdFromKey,
                                    micKey, readPicks, splitByKey, stem, writeRows)
from pupick_scipion.protocols.protocol_train import bestValidationAp

PROTOCOLS = ['ProtPupickImportCoordinates', 'ProtPupickTrain', 'ProtPupickPick']


class TestRegistration(unittest.TestCase):
    def test_plugin_is_discovered_with_protocols_and_objects(self):
        self.assertIn('pupick_scipion', Domain.getPlugins())
        protocols = Domain.getProtocols()
        for name in PROTOCOLS:
            self.assertIn(name, protocols)
            self.assertIs(protocols[name].getClassPackage(), pupick_scipion)
        self.assertIn('PupickModel', Domain.getObjects())
        self.assertTrue(issubclass(protocols['ProtPupickPick'],
                                   Domain.getProtocols()['ProtParticlePickingAuto']))

    def test_protocols_conf_puts_the_protocols_under_particles_picking(self):
        cp = configparser.ConfigParser()
        cp.optionxform = str
        cp.read(os.path.join(os.path.dirname(pupick_scipion.__file__), 'protocols.conf'))
        tree = json.loads(cp.get('PROTOCOLS', 'Protocols SPA'))
        particles = next(s for s in tree if s['text'] == 'Particles')
        picking = next(g for g in particles['children'] if g['text'] == 'Picking')
        self.assertEqual([p['value'] for p in picking['children']], PROTOCOLS)

    def test_scipion_tree_loader_shows_the_protocols(self):
        from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
        import pwem
        views = ProtocolTreeConfig.load(Domain, os.path.join(os.path.dirname(pwem.__file__), 'protocols.conf'))

        def values(node):
            yield node.value.get() if hasattr(node.value, 'get') else node.value
            for child in node.childs:
                yield from values(child)

        found = set(values(views['Protocols SPA']))
        self.assertTrue(set(PROTOCOLS) <= found, found)

    def test_installed_distribution_metadata(self):
        dist = importlib.metadata.distribution('scipion-em-pupick')
        self.assertEqual([ep.value for ep in dist.entry_points if ep.group == 'pyworkflow.plugin'
                          and ep.name == 'pupick_scipion'], ['pupick_scipion'])
        self.assertEqual([r.split('>')[0].split('=')[0].strip() for r in dist.requires], ['scipion-em'])
        with self.assertRaises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution('torch')  # Scipion's environment must never get torch
        self.assertEqual(dist.version, pupick_scipion.__version__)

    def test_bibtex_reference(self):
        Domain.getPlugins()  # registration parses bibtex.py
        self.assertIn('Bepler2019', pupick_scipion._bibtex)
        self.assertIn('Positive-unlabeled', pupick_scipion._bibtex['Bepler2019']['title'])
        self.assertEqual(pupick_scipion._references, ['Bepler2019'])

    def test_variables_and_installation_check(self):
        plugin = pupick_scipion.Plugin
        self.assertIn(PUPICK_VAR, plugin.getVars())
        self.assertIn(PUPICK_ACTIVATION_VAR, plugin.getVars())
        saved = dict(plugin._vars)
        try:
            plugin._vars[PUPICK_VAR] = '/nonexistent/bin/pupick'
            plugin._vars[PUPICK_ACTIVATION_VAR] = ''
            errors = plugin.validateInstallation()
            self.assertEqual(len(errors), 1)
            self.assertIn('/nonexistent/bin/pupick', errors[0])
            self.assertIn(PUPICK_VAR, errors[0])
            plugin._vars[PUPICK_VAR] = sys.executable
            self.assertEqual(plugin.validateInstallation(), [])
        finally:
            plugin._vars.clear()
            plugin._vars.update(saved)

    def test_environment_for_pupick_drops_scipion_python_settings(self):
        os.environ['PYTHONPATH'] = '/somewhere/scipion'
        try:
            env = pupick_scipion.Plugin.getEnviron()
        finally:
            del os.environ['PYTHONPATH']
        self.assertNotIn('PYTHONPATH', env)
        self.assertEqual(env['PYTHONUNBUFFERED'], '1')


class TestRunner(unittest.TestCase):
    ARGV_SCRIPT = 'import json, os, sys; print(json.dumps([os.environ.get("ACTIVATED"), sys.argv[1:]]))'

    def _capture(self, command):
        with tempfile.TemporaryFile('w+') as out:
            runner.run(command, out=out)
            out.seek(0)
            return out.read().splitlines()

    def test_arguments_travel_as_a_list_even_after_an_activation_command(self):
        args = ['-c', self.ARGV_SCRIPT, 'a b', '$HOME', '"quoted"', "it's", '; echo injected']
        for activation, expected in (('', None), ('export ACTIVATED=yes', 'yes')):
            lines = self._capture(runner.buildCommand(sys.executable, args, activation))
            printed = json.loads(lines[-1])
            self.assertEqual(printed, [expected, args[2:]])
            self.assertNotIn('injected', lines[:-1])

    def test_failure_message_carries_pupicks_error_line(self):
        script = ('import sys; print("loading model"); '
                  'print("pupick: error: /data/m.pt: not a pupick model file", file=sys.stderr); sys.exit(1)')
        with self.assertRaises(runner.PupickRunError) as ctx:
            self._capture([sys.executable, '-c', script])
        message = str(ctx.exception)
        self.assertIn('exit status 1', message)
        self.assertIn('pupick: error: /data/m.pt: not a pupick model file', message)

    def test_failure_without_error_line_reports_the_last_lines(self):
        with self.assertRaises(runner.PupickRunError) as ctx:
            self._capture([sys.executable, '-c', 'print("step 1"); print("boom"); raise SystemExit(3)'])
        self.assertIn('exit status 3', str(ctx.exception))
        self.assertIn('boom', str(ctx.exception))

    def test_missing_executable_is_a_clear_error(self):
        with self.assertRaises(runner.PupickRunError) as ctx:
            self._capture(['/nonexistent/bin/pupick', 'pick'])
        self.assertIn("cannot run '/nonexistent/bin/pupick'", str(ctx.exception))
        self.assertIn('PUPICK', str(ctx.exception))

    def test_progress_bar_redraws_are_thinned_in_the_log(self):
        script = ('import sys\nfor i in range(200): sys.stdout.write("\\r%d%%|" % i)\n'
                  'sys.stdout.write("\\ndone\\n")')
        lines = self._capture([sys.executable, '-c', script])
        self.assertIn('done', lines)
        self.assertLess(len(lines), 10)

    def test_gpu_placeholder(self):
        self.assertEqual(runner.substituteGpu(['--device', 'cuda:%(GPU)s'], [2, 3]), ['--device', 'cuda:2'])
        self.assertEqual(runner.substituteGpu(['--device', 'cpu'], []), ['--device', 'cpu'])
        with self.assertRaises(runner.PupickRunError):
            runner.substituteGpu(['--device', 'cuda:%(GPU)s'], [])


class TestConvert(unittest.TestCase):
    def test_stem_removes_exactly_one_image_extension(self):
        self.assertEqual(stem('Runs/0002/extra/May08_03.05.02.bin.mrc'), 'May08_03.05.02.bin')
        self.assertEqual(stem('a/b/061_10028.MRC'), '061_10028')
        self.assertEqual(stem('x.tif.mrc'), 'x.tif')
        self.assertEqual(stem('notes.txt'), 'notes.txt')

    def test_keys_round_trip(self):
        key = micKey(42, 'Runs/01/extra/061_10028.mrc')
        self.assertEqual(key, 'mic000042_061_10028')
        self.assertEqual(micIdFromKey(key), 42)
        self.assertEqual(micIdFromKey('/tmp/x/' + key + '.mrc'), 42)
        self.assertIsNone(micIdFromKey('061_10028'))

    def test_box_size_rule(self):
        self.assertEqual(boxSizeRule(56), 84)
        self.assertEqual(boxSizeRule(300 / 5.36), 84)
        self.assertEqual(boxSizeRule(57), 86)
        self.assertEqual(boxSizeRule(27), 42)

    def test_links_keep_extension_and_reject_unreadable_formats(self):
        with tempfile.TemporaryDirectory() as tmp:
            mic = os.path.join(tmp, 'a.mrc')
            open(mic, 'w').close()
            keys = linkMicrographs([(7, mic)], os.path.join(tmp, 'links'))
            self.assertEqual(keys, {'mic000007_a': 7})
            self.assertEqual(os.path.realpath(os.path.join(tmp, 'links', 'mic000007_a.mrc')), os.path.realpath(mic))
            linkMicrographs([(7, mic)], os.path.join(tmp, 'links'))  # again: replaced, no error
            with self.assertRaises(ConvertError) as ctx:
                linkMicrographs([(8, os.path.join(tmp, 'b.spi'))], os.path.join(tmp, 'links'))
            self.assertIn('b.spi', str(ctx.exception))

    def test_pick_tables(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'picks.csv')
            writeRows(path, ['micrograph', 'x', 'y', 'score', 'path'],
                      [('mic000001_a', 10.4, 20.6, 1.5, 'x'), ('mic000001_a', 30, 40, 3.0, 'x'),
                       ('mic000002_b', 5, 6, -2.0, 'y')])
            rows = readPicks(path)
            groups = splitByKey(rows)
            self.assertEqual(sorted(groups), [1, 2])
            self.assertEqual([(r['x'], r['y'], r['score']) for r in groups[1]], [(10.4, 20.6, 1.5), (30, 40, 3.0)])
            writeRows(path, ['micrograph', 'x', 'y'], [('a', 'ten', 3)])
            with self.assertRaises(ConvertError) as ctx:
                readPicks(path)
            self.assertIn('line 2', str(ctx.exception))
            self.assertIn("'ten'", str(ctx.exception))
            writeRows(path, ['mic', 'x', 'y'], [])
            with self.assertRaises(ConvertError) as ctx:
                readPicks(path)
            self.assertIn('micrograph', str(ctx.exception))

    def test_matcher(self):
        matcher = MicrographMatcher([(1, '061_10028.mrc', 'Runs/2/extra/061_10028.mrc'),
                                     (2, '062_10028.mrc', 'Runs/2/extra/062_10028.mrc')])
        self.assertEqual(matcher.match('061_10028'), 1)
        self.assertEqual(matcher.match('MotionCorr/job003/Movies/062_10028.mrc'), 2)
        self.assertEqual(matcher.match('J12/motioncorrected/012345678901234567890_062_10028_patch_aligned_doseweighted.mrc'), 2)
        self.assertIsNone(matcher.match('063_10028'))
        twins = MicrographMatcher([(1, 'a/x.mrc', 'a/x.mrc'), (2, 'b/x.mrc', 'b/x.mrc')])
        with self.assertRaises(ConvertError):
            twins.match('x')

    def test_best_validation_ap(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'model.train.tsv')
            with open(path, 'w') as fh:
                fh.write('epoch\tloss\tap\n1\t0.5\t0.31\n2\t0.4\tnan\n3\t0.3\t0.52\n')
            self.assertAlmostEqual(bestValidationAp(path), 0.52)
            self.assertIsNone(bestValidationAp(os.path.join(tmp, 'missing.tsv')))


if __name__ == '__main__':
    unittest.main()
