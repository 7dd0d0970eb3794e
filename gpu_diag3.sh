export PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=9.0 CXX=/usr/bin/g++ CC=/usr/bin/gcc
python3 setup.py -q build_ext --inplace > /dev/null 2>&1; echo build rc=$?
timeout 80 python3 -m pytest tests/test_cuda.py -q -rf -p no:cacheprovider -k "not compiles and not ddp_trains" 2>&1 | tail -6
timeout 70 python3 -c "
from ddp_hooks.testbed import TrainConfig, train
for r in train(TrainConfig(hook='ef21', epochs=1, device='cuda')):
    print({k: v for k, v in r.items() if not isinstance(v, (list, dict))})
" 2>&1 | tail -8
