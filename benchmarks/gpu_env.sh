# Sourced by the GPU lab drivers (gpu_robust.sh, gpu_datapath.sh) from the repository root: the packages the device
# machine lacks are installed once from the wheels carried in .whl/ (the device tool's README) into /tmp/site, and
# the synthetic data cache lives in the tree, so it stays on the machine between calls while it is warm.
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 POSEKIT_CACHE=$PWD/.cache
if ! python3 -c "import hydra, torch_pruning, pycocotools, albumentations" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
