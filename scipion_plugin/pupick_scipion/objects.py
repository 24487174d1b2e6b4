"""Scipion objects of the pupick plugin."""
import os

from pyworkflow.object import Float, Integer, String
from pwem.objects import EMObject


class PupickModel(EMObject):
    """A trained pupick model file together with what it was trained for."""

    def __init__(self, filename=None, **kwargs):
        EMObject.__init__(self, **kwargs)
        self._filename = String(filename)
        self._diameter = Float(kwargs.get('diameter', None))  # particle diameter, Å
        self._pixelSize = Float(kwargs.get('pixelSize', None))  # Å/px of the training micrographs
        self._arch = String(kwargs.get('arch', None))
        self._objective = String(kwargs.get('objective', None))
        self._epochs = Integer(kwargs.get('epochs', None))
        self._bestAp = Float(kwargs.get('bestAp', None))  # validation AP of the kept epoch

    def getFileName(self):
        return self._filename.get()

    def setFileName(self, filename):
        self._filename.set(filename)

    def getDiameter(self):
        """Particle diameter in Å."""
        return self._diameter.get()

    def setDiameter(self, diameter):
        self._diameter.set(diameter)

    def getPixelSize(self):
        return self._pixelSize.get()

    def setPixelSize(self, pixelSize):
        self._pixelSize.set(pixelSize)

    def getArch(self):
        return self._arch.get()

    def setArch(self, arch):
        self._arch.set(arch)

    def getObjective(self):
        return self._objective.get()

    def setObjective(self, objective):
        self._objective.set(objective)

    def getEpochs(self):
        return self._epochs.get()

    def setEpochs(self, epochs):
        self._epochs.set(epochs)

    def getBestAp(self):
        return self._bestAp.get()

    def setBestAp(self, ap):
        self._bestAp.set(ap)

    def getFiles(self):
        return {self.getFileName()} if self.getFileName() else set()

    def exists(self):
        return bool(self.getFileName()) and os.path.exists(self.getFileName())

    def __str__(self):
        parts = [self._arch.get() or 'model']
        if self._diameter.hasValue():
            parts.append('%g Å particles' % self._diameter.get())
        if self._bestAp.hasValue():
            parts.append('validation AP %.3f' % self._bestAp.get())
        return '%s (%s)' % (self.getClassName(), ', '.join(parts))
