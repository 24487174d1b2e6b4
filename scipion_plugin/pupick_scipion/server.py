"""A `pupick serve` client in the standard library only (urllib): in server mode Scipion needs no pupick installed.

It speaks the same HTTP API as pupick's own client (pupick/core/client.py): models are resolved (a local file is
uploaded under its sha256), a pick job is queued, polled, and its picks read as JSON. Every failure is a
PupickRunError whose message is one line.
"""
import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from .errors import PupickRunError

TOKEN_ENV = 'PUPICK_TOKEN_FILE'
RETRY_STATUS = (429, 502, 503, 504)
FINAL_STATES = ('done', 'failed', 'cancelled')


def readToken(tokenFile=None):
    """The token from tokenFile, else from the file named by $PUPICK_TOKEN_FILE, else None."""
    path = tokenFile or os.environ.get(TOKEN_ENV)
    if not path:
        return None
    try:
        with open(path) as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError as err:
        raise PupickRunError('%s: cannot read the token file (%s)' % (path, err.strerror))
    if len(lines) != 1:
        raise PupickRunError('%s: the token file must hold the token on one line' % path)
    return lines[0]


class ServerClient:
    """One pupick server: JSON over HTTP with a bearer token, bounded retries, one-line errors."""

    def __init__(self, url, tokenFile=None, timeout=60.0, retries=6, backoff=0.5):
        url = url.strip()
        if '://' not in url:
            url = 'http://' + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise PupickRunError('%s: not a pupick server URL (use http://HOST:PORT)' % url)
        self.url = url.rstrip('/')
        self.token = readToken(tokenFile)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def request(self, method, path, params=None, jsonBody=None, body=None, headers=None, timeout=None):
        """(status, body bytes) of a 2xx answer; PupickRunError with one line otherwise."""
        target = self.url + path + ('?' + urllib.parse.urlencode(params) if params else '')
        hdrs = {'Accept': 'application/json', 'User-Agent': 'pupick-scipion'}
        if self.token:
            hdrs['Authorization'] = 'Bearer ' + self.token
        if jsonBody is not None:
            body = json.dumps(jsonBody).encode()
            hdrs['Content-Type'] = 'application/json'
        elif body is not None:
            hdrs['Content-Type'] = 'application/octet-stream'
        hdrs.update(headers or {})
        delay = self.backoff
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(target, data=body, headers=hdrs, method=method)
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as err:
                status, message = err.code, _message(err.read())
                if status in RETRY_STATUS and attempt < self.retries:
                    wait = err.headers.get('Retry-After')
                    time.sleep(min(30.0, float(wait) if wait and wait.replace('.', '', 1).isdigit() else delay))
                    delay = min(30.0, delay * 2)
                    continue
                raise PupickRunError(_describe(self.url, status, message, attempt + 1))
            except (socket.timeout, TimeoutError):
                raise PupickRunError('no answer from the pupick server at %s within %g s (%s %s)'
                                     % (self.url, timeout or self.timeout, method, path))
            except (urllib.error.URLError, ConnectionError) as err:
                reason = getattr(err, 'reason', err)
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    raise PupickRunError('no answer from the pupick server at %s within %g s (%s %s)'
                                         % (self.url, timeout or self.timeout, method, path))
                refused = isinstance(reason, ConnectionRefusedError)
                if attempt < (min(self.retries, 3) if refused else self.retries):
                    time.sleep(delay)
                    delay = min(30.0, delay * 2)
                    continue
                why = 'connection refused' if refused else (getattr(reason, 'strerror', None) or str(reason))
                raise PupickRunError('cannot reach the pupick server at %s (%s)%s'
                                     % (self.url, why, ': is `pupick serve` running there?' if refused else ''))

    def getJson(self, path, **kwargs):
        return json.loads(self.request('GET', path, **kwargs)[1] or b'null')

    def model(self, name):
        """A registered model's entry, or None."""
        try:
            return self.getJson('/v1/models/' + urllib.parse.quote(name, safe=''))
        except PupickRunError as err:
            if '(404)' in str(err):
                return None
            raise

    def resolveModel(self, model):
        """The server's name for model: a local file (uploaded under its sha256 unless the server has it), else
        the name as given (the shipped `general`, or a model registered on the server)."""
        if os.path.isfile(model):
            h = hashlib.sha256()
            with open(model, 'rb') as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b''):
                    h.update(chunk)
            sha = h.hexdigest()
            if self.model(sha) is None:
                with open(model, 'rb') as fh:
                    self.request('POST', '/v1/models', params={'name': sha}, body=fh.read(),
                                 timeout=max(self.timeout, 300))
            return sha
        if self.model(model) is None:
            raise PupickRunError('%s: no such local model file, and the server at %s has no model of that name'
                                 % (model, self.url))
        return model

    def submitPick(self, micrographs, model, settings):
        """Queue a pick job of [{'micrograph', 'path', 'pixel_size'}]; returns the job id."""
        body = {'micrographs': micrographs, 'model': model, 'settings': settings}
        key = uuid.uuid4().hex  # the same key on every retry: one job
        return json.loads(self.request('POST', '/v1/pick', jsonBody=body, headers={'Idempotency-Key': key})[1])['job']

    def job(self, jobId):
        return self.getJson('/v1/jobs/' + urllib.parse.quote(jobId, safe=''))

    def cancel(self, jobId):
        try:
            self.request('DELETE', '/v1/jobs/' + urllib.parse.quote(jobId, safe=''))
        except PupickRunError:
            pass

    def wait(self, jobId, log=None, poll=1.0):
        """Poll a job until it ends; returns its final state."""
        seen, delay = None, 0.1
        try:
            while True:
                state = self.job(jobId)
                now = (state.get('state'), state.get('done'))
                if now != seen and log is not None:
                    log('server job %s: %s, %s of %s micrographs' % (jobId, now[0], now[1], state.get('total')))
                seen = now
                if state.get('state') in FINAL_STATES:
                    return state
                time.sleep(delay)
                delay = min(poll, delay * 1.5)
        except KeyboardInterrupt:  # Scipion stopping the step: leave no job running on the server
            self.cancel(jobId)
            raise

    def pick(self, micrographs, model, settings, log=None):
        """Pick on the server; returns {micrograph name: [(x, y, score)]} and raises on a failed job or micrograph."""
        jobId = self.submitPick(micrographs, model, settings)
        state = self.wait(jobId, log)
        if state['state'] != 'done':
            raise PupickRunError('pupick server job %s %s: %s' % (jobId, state['state'],
                                                                 state.get('error') or 'no reason given'))
        failures = state.get('failures') or []
        if failures:
            f = failures[0]
            raise PupickRunError('pupick server could not pick %d micrograph(s), e.g. %s: %s'
                                 % (len(failures), f.get('micrograph'), f.get('error') or 'failed'))
        records = self.getJson('/v1/jobs/%s/picks' % urllib.parse.quote(jobId, safe=''), params={'format': 'json'},
                               timeout=max(self.timeout, 300))['picks']
        out = {}
        for r in records:
            out.setdefault(str(r['micrograph']), []).append((float(r['x']), float(r['y']), float(r['score'])))
        return out


def _message(data):
    try:
        payload = json.loads(data)
    except ValueError:
        return data.decode('utf-8', 'replace').strip()[:200]
    if isinstance(payload, dict) and isinstance(payload.get('error'), str):
        return payload['error']
    return str(payload)[:200]


def _describe(url, status, message, tries):
    if status == 401:
        return ('the pupick server at %s refused the token (401): check the token file or $%s' % (url, TOKEN_ENV))
    if status == 429:
        return 'the pupick server at %s is busy after %d tries (429: %s)' % (url, tries, message)
    if status >= 500:
        return 'the pupick server at %s failed (%d: %s)' % (url, status, message)
    return 'pupick server: %s (%d)' % (message, status)
