"""Run the `pupick` command line as a subprocess with an argument list, streaming its output to the log."""
import collections
import os
import shlex
import subprocess
import sys
import time

from .errors import PupickRunError

GPU_PLACEHOLDER = '%(GPU)s'
PROGRESS_LOG_SECONDS = 10.0


def buildCommand(executable, args, activation=''):
    """Return the argument list that runs `executable args...`, after an optional environment activation."""
    args = [str(a) for a in args]
    if activation and activation.strip():
        # The activation is a shell snippet by nature (e.g. `conda activate pupick`); the program and its
        # arguments still travel as a list, as the script's positional parameters "$0" "$@".
        return ['bash', '-c', activation.strip() + ' && exec "$0" "$@"', executable] + args
    return [executable] + args


def substituteGpu(args, gpus):
    """Replace Scipion's %(GPU)s placeholder in each argument by the first GPU id of the step's slot."""
    if not any(GPU_PLACEHOLDER in a for a in args):
        return list(args)
    if not gpus:
        raise PupickRunError('pupick was asked to run on a GPU, but Scipion assigned no GPU to this step; '
                             'set the GPU id or switch "Use GPU" off')
    return [a.replace(GPU_PLACEHOLDER, str(gpus[0])) for a in args]


def failureSummary(lines):
    """The most telling line(s) of a failed run: pupick's own error line, else click's, else the last lines."""
    for prefix in ('pupick: error:', 'Error:'):
        hits = [ln.strip() for ln in lines if ln.strip().startswith(prefix)]
        if hits:
            return hits[-1]
    tail = [ln.strip() for ln in lines if ln.strip()]
    return ' | '.join(tail[-5:]) if tail else 'no output'


def _iterLines(stream):
    """Yield (text, isRefresh) for each line of a byte stream, treating a carriage return as a line end."""
    buf = b''
    while True:
        chunk = stream.read1(65536) if hasattr(stream, 'read1') else stream.read(65536)
        if not chunk:
            break
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b'\n'), buf.find(b'\r')) if i >= 0), default=-1)
            if cut < 0:
                break
            line, sep, buf = buf[:cut], buf[cut:cut + 1], buf[cut + 1:]
            yield line.decode('utf-8', 'replace'), sep == b'\r'
    if buf:
        yield buf.decode('utf-8', 'replace'), False


def run(command, env=None, cwd=None, out=None):
    """Run `command` (a list), copy its output to `out` (default stdout), raise PupickRunError on failure."""
    out = out or sys.stdout
    head = command[3:5] if command[0] == 'bash' else command[:2]
    name = ' '.join([os.path.basename(head[0])] + head[1:])
    out.write('** Running: %s\n' % shlex.join(command))
    out.flush()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)
    except OSError as err:
        raise PupickRunError("cannot run '%s': %s. Install pupick and set PUPICK (the path of the pupick "
                             "executable) in the [PLUGINS] section of scipion.conf" % (command[0], err.strerror))
    tail = collections.deque(maxlen=60)
    lastProgress = 0.0
    try:
        for text, isRefresh in _iterLines(proc.stdout):
            if not text.strip():
                continue
            tail.append(text)
            now = time.monotonic()
            if isRefresh:  # progress-bar redraw: keep the log readable
                if now - lastProgress < PROGRESS_LOG_SECONDS:
                    continue
                lastProgress = now
            out.write(text + '\n')
            out.flush()
        status = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted while reading: leave no orphan behind
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if status != 0:
        how = 'exit status %d' % status if status > 0 else 'killed by signal %d' % -status
        raise PupickRunError('%s failed (%s): %s' % (name, how, failureSummary(tail)))
