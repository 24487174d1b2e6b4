#!/bin/sh
# Topaz 0.3.20 in its own virtualenv, for bench/pick_speed.py's same-run comparison:
#   bench/topaz_env.sh [.venv-topaz] && TOPAZ=.venv-topaz/bin/topaz-bench python bench/pick_speed.py --quick
# Topaz needs torchvision only for training augmentation; PyPI's torchvision wheels are built against CUDA torch and
# do not load with the CPU torch here, so a stand-in package (raising if called) takes its place. Picking (preprocess
# + extract, what the benchmark times) never calls it, and the stand-in imports faster than the real one would, so
# Topaz's times here are if anything a little shorter.
set -eu
VENV=${1:-.venv-topaz}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet --no-deps "topaz-em==0.3.20"
"$VENV/bin/pip" install --quiet tqdm h5py numpy pandas psutil scikit-learn scipy pillow future
STUB="$VENV/torchvision-stand-in/torchvision"
mkdir -p "$STUB/transforms"
echo 'from . import transforms  # noqa: F401' > "$STUB/__init__.py"
echo 'from . import functional  # noqa: F401' > "$STUB/transforms/__init__.py"
cat > "$STUB/transforms/functional.py" <<'PY'
def _absent(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in: Topaz training is not part of this benchmark")


rotate = hflip = vflip = _absent
PY
VENV_ABS=$(cd "$VENV" && pwd)
cat > "$VENV/bin/topaz-bench" <<SH
#!/bin/sh
PYTHONPATH="$VENV_ABS/torchvision-stand-in" exec "$VENV_ABS/bin/topaz" "\$@"
SH
chmod +x "$VENV/bin/topaz-bench"
echo "TOPAZ=$VENV_ABS/bin/topaz-bench"
