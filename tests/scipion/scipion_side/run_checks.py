"""Run the Scipion-side checks (unittest) and write each outcome to $PUPICK_TEST_OUT/results.json."""
import json
import os
import sys
import time
import unittest


class RecordingResult(unittest.TextTestResult):
    """A verbose text result that also keeps one record per test: id, outcome, seconds, details."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []
        self._start = time.time()

    def startTest(self, test):
        self._start = time.time()
        super().startTest(test)

    def _record(self, test, outcome, err=None):
        self.records.append({'test': test.id(), 'outcome': outcome, 'seconds': round(time.time() - self._start, 1),
                             'detail': self._exc_info_to_string(err, test) if err else ''})

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, 'ok')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, 'fail', err)

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, 'error', err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.records.append({'test': test.id(), 'outcome': 'skipped', 'seconds': 0, 'detail': reason})


def main(moduleNames):
    suite = unittest.defaultTestLoader.loadTestsFromNames(moduleNames)
    result = unittest.TextTestRunner(verbosity=2, resultclass=RecordingResult).run(suite)
    with open(os.path.join(os.environ['PUPICK_TEST_OUT'], 'results.json'), 'w') as fh:
        json.dump(result.records, fh, indent=1)
    return 0 if result.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:] or ['units_checks', 'workflow_checks']))
