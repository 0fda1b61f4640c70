"""Run a command as if this x86 CPU had AVX2 but no AVX-512, VNNI or AMX (or, with --isa
avx512-vnni, AVX-512 VNNI but no AMX).

INT8 speed on a CPU depends on which kernels ONNX Runtime (MLAS), oneDNN and numpy pick, and
they pick them from CPUID at start-up. This makes CPUID say "AVX2 only" to the command, so the
same machine runs the kernels an AVX2-only CPU (e.g. an AMD EPYC before Zen 4) runs. With
``--isa avx512-vnni`` only AMX and the instructions newer than it are hidden, which is the
instruction set of an AVX-512 VNNI CPU without AMX (e.g. an Ice Lake Xeon or an AMD EPYC Zen 4):

- a small preload library turns on CPUID faulting (Linux ``arch_prctl(ARCH_SET_CPUID, 0)``,
  which needs the ``cpuid_fault`` CPU flag) and answers each CPUID with the hidden flags' bits
  cleared (``FLAG_BITS``: leaf 7 and 7.1, where AVX-512, VNNI and AMX are declared);
- a SIGSEGV handler the command installs itself (Python's faulthandler, which pytest turns on) is
  kept behind the answerer and still gets every real fault;
- in a private mount namespace, /proc/cpuinfo is replaced by a copy without those flags, so
  rescompile's own VNNI check and the report's environment block agree with CPUID;
- ``RESCOMPILE_CPU_MASK`` is set, and the benchmark report says the flags were hidden.

It is the instruction set that is emulated, not the chip: caches, clocks and memory are this
machine's. A figure measured this way says how the AVX2 kernels compare on this machine; it is
not a measurement of another CPU.

    python benchmarks/without_vnni.py -- python benchmarks/bench_cpu.py --out benchmarks/results/avx2
    python benchmarks/without_vnni.py --check      (show what the masked CPU reports, and exit)
    python benchmarks/without_vnni.py -- python -m pytest -q      (the test suite on AVX2 kernels)
    python benchmarks/without_vnni.py --isa avx512-vnni -- python benchmarks/openvino_forms.py BUNDLE

Needs Linux on x86-64, a C compiler (cc), ``unshare`` (util-linux) and either root or
unprivileged user namespaces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# /proc/cpuinfo flag -> (CPUID leaf, subleaf, register, bit), as the Intel SDM's CPUID table declares them.
FLAG_BITS = {
    "avx512f": (7, 0, "b", 16), "avx512dq": (7, 0, "b", 17), "avx512ifma": (7, 0, "b", 21), "avx512pf": (7, 0, "b", 26),
    "avx512er": (7, 0, "b", 27), "avx512cd": (7, 0, "b", 28), "avx512bw": (7, 0, "b", 30), "avx512vl": (7, 0, "b", 31),
    "avx512vbmi": (7, 0, "c", 1), "avx512_vbmi2": (7, 0, "c", 6), "avx512_vnni": (7, 0, "c", 11), "avx512_bitalg": (7, 0, "c", 12),
    "avx512_vpopcntdq": (7, 0, "c", 14), "avx512_4vnniw": (7, 0, "d", 2), "avx512_4fmaps": (7, 0, "d", 3),
    "avx512_vp2intersect": (7, 0, "d", 8), "amx_bf16": (7, 0, "d", 22), "avx512_fp16": (7, 0, "d", 23), "amx_tile": (7, 0, "d", 24),
    "amx_int8": (7, 0, "d", 25), "avx_vnni": (7, 1, "a", 4), "avx512_bf16": (7, 1, "a", 5), "avx_ifma": (7, 1, "a", 23),
    "avx_vnni_int8": (7, 1, "d", 4), "avx_ne_convert": (7, 1, "d", 5), "avx_vnni_int16": (7, 1, "d", 10),
}
# What each --isa hides: "avx2" everything above; "avx512-vnni" AMX and what came with or after it
# (AVX512-FP16, AVX-IFMA, AVX-VNNI-INT8/INT16, AVX-NE-CONVERT), keeping AVX-512 VNNI and BF16.
ISAS = {
    "avx2": set(FLAG_BITS),
    "avx512-vnni": {"amx_bf16", "amx_tile", "amx_int8", "avx512_fp16", "avx_ifma", "avx_vnni_int8", "avx_ne_convert", "avx_vnni_int16"},
}
HIDDEN_FLAGS = ISAS["avx2"]
MASK_NOTE = {"avx2": "AVX-512/VNNI/AMX hidden by benchmarks/without_vnni.py",
             "avx512-vnni": "AMX hidden by benchmarks/without_vnni.py --isa avx512-vnni"}


def clear_masks(hidden: set[str]) -> dict[str, int]:
    """The bits to clear in each CPUID register, as the shim's macros (MASK_7_0_B, ...)."""
    masks = {f"MASK_{leaf}_{sub}_{reg.upper()}": 0 for leaf, sub, reg, _ in FLAG_BITS.values()}
    for flag in hidden:
        leaf, sub, reg, bit = FLAG_BITS[flag]
        masks[f"MASK_{leaf}_{sub}_{reg.upper()}"] |= 1 << bit
    return masks

SHIM = r"""
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#define SET_CPUID 0x1012  /* ARCH_SET_CPUID */

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction chained;  /* the SIGSEGV handler the program asked for (faulthandler, ...) */

static void answer(int sig, siginfo_t *info, void *raw) {
    greg_t *r = ((ucontext_t *)raw)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* a real fault: the program's own handler, else the default */
        if (chained.sa_flags & SA_SIGINFO) {
            chained.sa_sigaction(sig, info, raw);
        } else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN) {
            chained.sa_handler(sig);
        } else {
            struct sigaction dfl;
            memset(&dfl, 0, sizeof dfl);
            dfl.sa_handler = SIG_DFL;
            real_sigaction(SIGSEGV, &dfl, 0);
        }
        return;
    }
    unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
    syscall(SYS_arch_prctl, SET_CPUID, 1);
    __cpuid_count(leaf, sub, a, b, c, d);
    syscall(SYS_arch_prctl, SET_CPUID, 0);
    if (leaf == 7 && sub == 0) {  /* the MASK_ macros come from FLAG_BITS and --isa, on cc's command line */
        b &= ~(unsigned)MASK_7_0_B; c &= ~(unsigned)MASK_7_0_C; d &= ~(unsigned)MASK_7_0_D;
    } else if (leaf == 7 && sub == 1) {
        a &= ~(unsigned)MASK_7_1_A; d &= ~(unsigned)MASK_7_1_D;
    }
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

/* A program that installs its own SIGSEGV handler (Python's faulthandler, pytest) gets it called
   for real faults; the CPUID answerer stays in front. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void start(void) {
    struct sigaction sa;
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    memset(&chained, 0, sizeof chained);
    chained.sa_handler = SIG_DFL;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = answer;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    real_sigaction(SIGSEGV, &sa, 0);
    if (syscall(SYS_arch_prctl, SET_CPUID, 0) != 0) {
        static const char msg[] = "without_vnni: CPUID faulting is not available here\n";
        write(2, msg, sizeof msg - 1);
        _exit(3);
    }
}
"""

CHECK = r"""
import faulthandler
faulthandler.enable()  # a SIGSEGV handler of the program's own, as pytest installs: CPUID must still be answered
import onnxruntime, numpy
from rescompile.bench.env import cpu_flags
from rescompile.stages.calibrate.qdq import has_vnni
print("cpu flags (as /proc/cpuinfo says):", ", ".join(cpu_flags()) or "none of avx2/avx512/vnni/amx")
print("VNNI for rescompile:", has_vnni())
"""


def masked_cpuinfo(text: str, hidden: set[str] = HIDDEN_FLAGS) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("flags"):
            key, _, flags = line.partition(":")
            line = key + ": " + " ".join(f for f in flags.split() if f not in hidden)
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print what the masked CPU reports and exit")
    parser.add_argument("--isa", choices=sorted(ISAS), default="avx2",
                        help="the instruction set to leave: avx2 (no AVX-512, VNNI or AMX; the default) or avx512-vnni (no AMX)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.check:
        command = [sys.executable, "-c", CHECK]
    if not command:
        parser.error("give a command after --, or --check")
    info = Path("/proc/cpuinfo").read_text(errors="replace")
    if "cpuid_fault" not in info.split():
        print("without_vnni: this CPU (or its hypervisor) offers no CPUID faulting (no cpuid_fault flag)", file=sys.stderr)
        return 2
    for tool in ("cc", "unshare"):
        if shutil.which(tool) is None:
            print(f"without_vnni: needs {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="without-vnni-") as tmp:
        src, lib, cpuinfo = Path(tmp, "mask.c"), Path(tmp, "libmask.so"), Path(tmp, "cpuinfo")
        src.write_text(SHIM)
        defines = [f"-D{k}={v:#x}u" for k, v in clear_masks(ISAS[args.isa]).items()]
        subprocess.run(["cc", "-O2", *defines, "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
        cpuinfo.write_text(masked_cpuinfo(info, ISAS[args.isa]))
        env = dict(os.environ, LD_PRELOAD=str(lib), RESCOMPILE_CPU_MASK=MASK_NOTE[args.isa])
        ns = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
        script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
        return subprocess.run([*ns, "sh", "-c", script, str(cpuinfo), *command], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
