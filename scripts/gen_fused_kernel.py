#!/usr/bin/env python3
"""Generate src/chunking/fused/kernel.s: one 8-lane AVX2 BLAKE3 compression with a
FastCDC-2020 gear scan interleaved instruction by instruction.

Register plan (follows blake3's blake3_avx2_x86-64_unix.S):
  v0..v7 -> ymm0..ymm7, v9..v11 -> ymm9..ymm11, v12..v15 -> ymm12..ymm15,
  v8 lives in memory [rdi+V8] and ymm8 is the temporary.
Scalar: rdi = state, rsi = p, rax = h, rcx = gear_ls, rdx = gear,
  r8 = mask_ls, r9 = mask, r10/r11 temporaries. All caller-saved (SysV).

Usage: gen_fused_kernel.py PAIRS_PER_HALF_ROUND > src/chunking/fused/kernel.s
"""
import os
import sys

PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 8

MSG_SCHEDULE = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
]

# Struct offsets (must match FusedState in src/chunking/fused/avx2.rs).
MSG = 0
CV = 512
CTR_LO = 768
CTR_HI = 800
BLEN = 832
FLAGS = 864
V8 = 896
ROT16 = 928
ROT8 = 960
IV = 992  # 4 vectors
P = 1120
H = 1128
MASK_LS = 1136
MASK = 1144
GEAR = 1152
GEAR_LS = 1160
SCHED_END = 1168
HIT = 1176
SCAN_ROUNDS = 1632  # after SCHED (1184 + 448)
SCHED = 1184  # [7][16] u32 byte offsets of message vectors


def m(j):
    return f"ymmword ptr [rdi+{MSG + 32 * j}]"


def half(a, b, c, d, msgs, first):
    """Vector instructions of one half G on 4 groups.
    a,b,c,d: lists of 4 state indices. c may contain 8 (memory resident).
    msgs: positions in the per-round schedule row (byte offsets of the
    message vectors are loaded from [r12 + 4*pos])."""
    rot_const = ROT16 if first else ROT8
    sh = (12, 20) if first else (7, 25)
    out = []
    for j in range(4):
        out.append(f"mov r13d, dword ptr [r12+{4 * msgs[j]}]")
        out.append(f"vpaddd ymm{a[j]}, ymm{a[j]}, ymmword ptr [rdi+r13]")
    for j in range(4):
        out.append(f"vpaddd ymm{a[j]}, ymm{a[j]}, ymm{b[j]}")
    for j in range(4):
        out.append(f"vpxor ymm{d[j]}, ymm{d[j]}, ymm{a[j]}")
    if ROTMEM:
        for j in range(4):
            out.append(f"vpshufb ymm{d[j]}, ymm{d[j]}, ymmword ptr [rdi+{rot_const}]")
    else:
        out.append(f"vmovdqa ymm8, ymmword ptr [rdi+{rot_const}]")
        for j in range(4):
            out.append(f"vpshufb ymm{d[j]}, ymm{d[j]}, ymm8")
    for j in range(4):
        if c[j] == 8:
            out.append(f"vpaddd ymm8, ymm{d[j]}, ymmword ptr [rdi+{V8}]")
        else:
            out.append(f"vpaddd ymm{c[j]}, ymm{c[j]}, ymm{d[j]}")
    for j in range(4):
        out.append(f"vpxor ymm{b[j]}, ymm{b[j]}, ymm{c[j]}")
    out.append(f"vmovdqa ymmword ptr [rdi+{V8}], ymm8")
    for j in range(4):
        out.append(f"vpsrld ymm8, ymm{b[j]}, {sh[0]}")
        out.append(f"vpslld ymm{b[j]}, ymm{b[j]}, {sh[1]}")
        out.append(f"vpor ymm{b[j]}, ymm{b[j]}, ymm8")
    return out


STUBS = []


def hit_site(pos_off):
    """Conditional jump to a cold stub recording the first hit position
    (rsi + pos_off) and disabling further hits for the rest of this round
    (masks := all ones, so a later hit needs an exactly-zero hash; the stub
    then only jumps back) and scanning in later rounds (r14 := 1)."""
    k = len(STUBS)
    STUBS.append([
        f".L{NAME}_hit{k}:",
        f"cmp qword ptr [rdi+{HIT}], 0",
        f"jne .L{NAME}_back{k}",
        f"mov qword ptr [rdi+{HIT}], rsi",
        f"add qword ptr [rdi+{HIT}], {pos_off}",
        "mov r8, -1",
        "mov r9, -1",
        # Remaining rounds after this one run without scanning (the fused
        # round ends with `dec r14`).
        "mov r14d, 1",
        f"jmp .L{NAME}_back{k}",
    ])
    return [f"jz .L{NAME}_hit{k}", f".L{NAME}_back{k}:"]


def scan_block(off):
    """Scalar instructions for PAIRS byte pairs starting at [rsi+off]."""
    out = []
    for i in range(PAIRS):
        o = off + 2 * i
        out.append(f"movzx r10d, byte ptr [rsi+{o}]")
        out.append("mov r10, qword ptr [rcx+r10*8]")  # x = gear_ls[a]
        if CHAIN == "nochain":
            out.append("lea r11, [r10+r10*2]")
        else:
            out.append("lea r11, [r10+rax*4]")  # e = (h << 2) + x
        out.append("test r11, r8")
        out.extend(hit_site(o))
        out.append(f"movzx r11d, byte ptr [rsi+{o + 1}]")
        out.append("add r10, qword ptr [rdx+r11*8]")  # y = x + gear[b]
        if CHAIN == "nochain":
            out.append("lea rax, [r10+r10*4]")  # EXPERIMENT ONLY: breaks the chain
        elif CHAIN == "lea":
            out.append("lea rax, [r10+rax*4]")  # h = (h << 2) + y
        else:
            out.append("shl rax, 2")
            out.append("add rax, r10")
        out.append("test rax, r9")
        out.extend(hit_site(o + 1))
    return out


import os
MERGE = os.environ.get("MERGE", "even")
ROTMEM = os.environ.get("ROTMEM", "0") == "1"
CHAIN = os.environ.get("CHAIN", "lea")


def merge(vec, sca):
    """Interleave: keep order inside each list, spread evenly.
    Scalar 'test; jz' pairs stay adjacent (macro-fusion)."""
    if MERGE == "block":
        return vec + sca
    if MERGE == "scanfirst":
        return sca + vec
    # group scalar instrs so test+jz stay together
    groups = []
    for ins in sca:
        if (ins.startswith("jz") or ins.endswith(":")) and groups:
            groups[-1].append(ins)
        else:
            groups.append([ins])
    out = []
    nv, ns = len(vec), len(groups)
    vi = si = 0
    total = nv + ns
    for k in range(total):
        # choose the stream that is "behind" proportionally
        if vi < nv and (si >= ns or (vi + 1) / nv <= (si + 1) / ns):
            out.append(vec[vi]); vi += 1
        else:
            out.extend(groups[si]); si += 1
    return out


def gen(mode, name):
    global NAME, STUBS
    NAME = name
    STUBS = []
    lines = []
    emit = lines.append
    emit("    .p2align 6")
    emit(f"    .globl {name}")
    emit(f"    .type {name},@function")
    emit(f"{name}:")
    body = []
    # load state
    for i in range(8):
        body.append(f"vmovdqa ymm{i}, ymmword ptr [rdi+{CV + 32 * i}]")
    body.append(f"vmovdqa ymm8, ymmword ptr [rdi+{IV}]")
    body.append(f"vmovdqa ymmword ptr [rdi+{V8}], ymm8")
    for i in range(1, 4):
        body.append(f"vmovdqa ymm{8 + i}, ymmword ptr [rdi+{IV + 32 * i}]")
    body.append(f"vmovdqa ymm12, ymmword ptr [rdi+{CTR_LO}]")
    body.append(f"vmovdqa ymm13, ymmword ptr [rdi+{CTR_HI}]")
    body.append(f"vmovdqa ymm14, ymmword ptr [rdi+{BLEN}]")
    body.append(f"vmovdqa ymm15, ymmword ptr [rdi+{FLAGS}]")
    body.append(f"mov rsi, qword ptr [rdi+{P}]")
    body.append(f"mov rax, qword ptr [rdi+{H}]")
    body.append(f"mov r8, qword ptr [rdi+{MASK_LS}]")
    body.append(f"mov r9, qword ptr [rdi+{MASK}]")
    body.append(f"mov rdx, qword ptr [rdi+{GEAR}]")
    body.append(f"mov rcx, qword ptr [rdi+{GEAR_LS}]")
    body.append("push r12")
    body.append("push r13")
    body.append("push r14")
    body.append(f"mov r14, qword ptr [rdi+{SCAN_ROUNDS}]")
    body.append(f"lea r12, [rdi+{SCHED}]")
    body.append(f"lea r13, [rdi+{SCHED + 7 * 64}]")
    body.append(f"mov qword ptr [rdi+{SCHED_END}], r13")
    halves = [
        half([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [0, 2, 4, 6], True),
        half([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [1, 3, 5, 7], False),
        half([0, 1, 2, 3], [5, 6, 7, 4], [10, 11, 8, 9], [15, 12, 13, 14], [8, 10, 12, 14], True),
        half([0, 1, 2, 3], [5, 6, 7, 4], [10, 11, 8, 9], [15, 12, 13, 14], [9, 11, 13, 15], False),
    ]
    body.append(".p2align 4")
    body.append("8:")
    off = 0
    if mode == "fused":
        # r14 = number of rounds that still scan; the rest run plain.
        body.append("test r14, r14")
        body.append("jz 7f")
        for hv in halves:
            body.extend(merge(hv, scan_block(off)))
            off += 2 * PAIRS
        body.append(f"add rsi, {off}")
        body.append("dec r14")
        body.append("add r12, 64")
        body.append(f"cmp r12, qword ptr [rdi+{SCHED_END}]")
        body.append("jne 8b")
        body.append("jmp 6f")
        body.append(".p2align 4")
        body.append("7:")
    for hv in halves:
        body.extend(hv)
    body.append("add r12, 64")
    body.append(f"cmp r12, qword ptr [rdi+{SCHED_END}]")
    body.append("jne 8b")
    body.append("6:")
    off *= 7
    # finalize: cv = v[0..8] ^ v[8..16]
    body.append(f"vpxor ymm0, ymm0, ymmword ptr [rdi+{V8}]")
    for i in range(1, 8):
        body.append(f"vpxor ymm{i}, ymm{i}, ymm{i + 8}")
    for i in range(8):
        body.append(f"vmovdqa ymmword ptr [rdi+{CV + 32 * i}], ymm{i}")
    body.append(f"mov qword ptr [rdi+{P}], rsi")
    body.append(f"mov qword ptr [rdi+{H}], rax")
    body.append("pop r14")
    body.append("pop r13")
    body.append("pop r12")
    body.append("vzeroupper")
    body.append("xor eax, eax")
    body.append("ret")
    for st in STUBS:
        body.extend(st)
    for ins in body:
        if ins.endswith(":"):
            emit(ins)
        else:
            emit("    " + ins)
    emit(f"    .size {name}, .-{name}")
    return lines, off


def main():
    import os
    mode = os.environ.get("GEN_MODE", "fused")
    l1, off = gen(mode, "cdc_fused_compress8_scan")
    l2, _ = gen("hash", "cdc_compress8_asm")
    print("// Generated by scripts/gen_fused_kernel.py with PAIRS=%d; do not edit." % PAIRS)
    print("// cdc_fused_compress8_scan scans up to %d bytes per compression" % off)
    print("// (%d bytes in each of the first scan_rounds rounds);" % (off // 7))
    print("// cdc_compress8_asm is the same compression without the scan.")
    print("\n".join(l1 + l2))


main()
