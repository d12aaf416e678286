"""
The code that the scripts share, installed as `mixer_scripts` (setup.cfg maps the package to this folder):

- `common`: precision, data sets (Fashion-MNIST, Shakespeare's tokenizer), logging, checks and the Trainer loop;
- `model_card`: the model card that training writes beside the weights;
- `peers`: BERT and FNet MLMs with the Mixer's sparse decoder, for the comparisons;
- `benchmark_cases`: the workloads that the benchmarks and the profiler time;
- `onnx_utils`: ONNX export, onnxruntime sessions and int8 quantization.

The entry points, each run as `python scripts/<folder>/<script>.py`, are grouped by job: `training/`, `benchmarks/`,
`conversion/` (ONNX export, resize evaluation; the timm/JAX converter is the installed `convert_mixer_checkpoint`),
`test_data/` (the makers of tests/data) and `plots/`. No entry point imports another.
"""
