"""Plain-CSV exchange between Scipion sets and the pupick command line."""
import csv
import math
import os
import re

from .constants import IMAGE_EXTENSIONS
from .errors import ConvertError

_KEY_RE = re.compile(r'^mic(\d+)_')
# cryoSPARC decorations of a micrograph name: leading uid and motion-correction suffixes
_CS_UID_RE = re.compile(r'^\d{6,}_')
_CS_SUFFIX_RE = re.compile(r'(_patch_aligned_doseweighted|_patch_aligned|_doseweighted|_rigid_aligned)$')


def stem(path):
    """File name minus directories and minus exactly one known image extension (pupick's naming rule)."""
    base = os.path.basename(str(path))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in IMAGE_EXTENSIONS else base


def micKey(micId, fileName):
    """Unique name given to a micrograph in pupick's tables: its Scipion id plus its stem."""
    return 'mic%06d_%s' % (int(micId), stem(fileName))


def micIdFromKey(key):
    """Scipion id encoded in a name made by micKey(), or None."""
    m = _KEY_RE.match(os.path.basename(str(key)))
    return int(m.group(1)) if m else None


def linkMicrographs(mics, folder):
    """Symlink each (micId, fileName) into folder under its micKey name; return {key: micId}."""
    os.makedirs(folder, exist_ok=True)
    keys = {}
    for micId, fileName in mics:
        ext = os.path.splitext(fileName)[1]
        if ext.lower() not in IMAGE_EXTENSIONS:
            raise ConvertError('%s: pupick reads %s micrographs, not %s; convert the micrographs first'
                               % (fileName, '/'.join(IMAGE_EXTENSIONS), ext or 'files without extension'))
        key = micKey(micId, fileName)
        link = os.path.join(folder, key + ext)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(fileName), link)
        keys[key] = micId
    return keys


def boxSizeRule(diameterPx):
    """Default box size: the smallest even integer >= 1.5 x the particle diameter (original pixels)."""
    box = int(math.ceil(1.5 * float(diameterPx) - 1e-9))
    return box + (box % 2)


def writeRows(path, header, rows):
    """Write a CSV atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = '%s.tmp%d' % (path, os.getpid())
    with open(tmp, 'w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def _number(value, path, lineNo, column):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConvertError('%s, line %d: column %s holds %r, not a number' % (path, lineNo, column, value))


def readPicks(path, needMicrograph=True):
    """Read a pick table (micrograph, x, y[, score]) written by pupick; return a list of dicts."""
    if not os.path.exists(path):
        raise ConvertError('%s: pupick wrote no pick table' % path)
    with open(path, newline='') as fh:
        reader = csv.DictReader(fh)
        required = ('micrograph', 'x', 'y') if needMicrograph else ('x', 'y')
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ConvertError('%s: missing column(s) %s' % (path, ', '.join(missing)))
        hasScore = 'score' in reader.fieldnames
        rows = []
        for lineNo, rec in enumerate(reader, start=2):
            score = rec.get('score') if hasScore else None
            rows.append({'micrograph': rec.get('micrograph'),
                         'x': _number(rec['x'], path, lineNo, 'x'),
                         'y': _number(rec['y'], path, lineNo, 'y'),
                         'score': (_number(score, path, lineNo, 'score')
                                   if score not in (None, '', 'nan', 'NaN') else None)})
    return rows


def splitByKey(rows):
    """Group pick rows by the Scipion micrograph id encoded in their micrograph name."""
    groups = {}
    for row in rows:
        micId = micIdFromKey(row['micrograph'])
        if micId is None:
            raise ConvertError('pupick returned picks for an unknown micrograph %r' % row['micrograph'])
        groups.setdefault(micId, []).append(row)
    return groups


def _normalized(name):
    return _CS_SUFFIX_RE.sub('', _CS_UID_RE.sub('', stem(name)))


class MicrographMatcher:
    """Match micrograph names from foreign pick tables to Scipion micrographs.

    By stem first; then after removing cryoSPARC's uid prefix and motion-correction suffixes.
    """

    def __init__(self, mics):
        """mics: iterable of (micId, micName, fileName)."""
        self._exact, self._loose = {}, {}
        self.examples = []
        for micId, micName, fileName in mics:
            names = {stem(n) for n in (micName, fileName) if n}
            for n in names:
                self._exact.setdefault(n, set()).add(micId)
                self._loose.setdefault(_normalized(n), set()).add(micId)
            if len(self.examples) < 3:
                self.examples.append(stem(micName or fileName))

    def match(self, name):
        """Scipion id of the micrograph called `name`, or None; ambiguity is an error."""
        for table, key in ((self._exact, stem(name)), (self._loose, _normalized(name))):
            ids = table.get(key)
            if ids:
                if len(ids) > 1:
                    raise ConvertError('micrograph name %r matches several input micrographs (ids %s)'
                                       % (name, ', '.join(str(i) for i in sorted(ids))))
                return next(iter(ids))
        return None
