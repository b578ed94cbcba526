"""A classic BPF interpreter, so a filter's verdict on a frame can be checked in-process.

It follows the kernel's semantics (net/core/filter.c, ``bpf_check_classic``): a load
past the end of the frame ends the program with 0 (drop), A and X are 32-bit, the
scratch memory has 16 words. Only what libpcap and ``mamori.sensor.capture.bpf`` emit is
implemented; anything else raises, so a new opcode cannot pass unnoticed. The
kernel itself is the oracle for this interpreter (tests/sensor/test_bpf.py).
"""

from __future__ import annotations

Instruction = tuple[int, int, int, int]
_MASK = 0xFFFFFFFF


class OutOfFrame(Exception):
    pass


def _load(frame: bytes, offset: int, size: int) -> int:
    if offset < 0 or offset + size > len(frame):
        raise OutOfFrame
    return int.from_bytes(frame[offset:offset + size], "big")


def run(program: list[Instruction], frame: bytes, limit: int = 100_000) -> int:
    """What the program returns for ``frame``: 0 drops it, anything else keeps that many bytes."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    steps = 0
    sizes = {0x00: 4, 0x08: 2, 0x10: 1}
    try:
        while True:
            steps += 1
            if steps > limit or pc >= len(program):
                raise AssertionError(f"BPF program ran off at {pc}")
            code, jt, jf, k = program[pc]
            pc += 1
            cls = code & 0x07
            if cls == 0x00:  # LD
                mode = code & 0xE0
                if mode == 0x00:
                    a = k
                elif mode == 0x20:
                    a = _load(frame, k, sizes[code & 0x18])
                elif mode == 0x40:
                    a = _load(frame, x + k, sizes[code & 0x18])
                elif mode == 0x60:
                    a = mem[k]
                elif mode == 0x80:
                    a = len(frame)
                else:
                    raise NotImplementedError(hex(code))
            elif cls == 0x01:  # LDX
                mode = code & 0xE0
                if mode == 0x00:
                    x = k
                elif mode == 0x60:
                    x = mem[k]
                elif mode == 0x80:
                    x = len(frame)
                elif code == 0xB1:
                    x = 4 * (_load(frame, k, 1) & 0x0F)
                else:
                    raise NotImplementedError(hex(code))
            elif cls == 0x02:
                mem[k] = a
            elif cls == 0x03:
                mem[k] = x
            elif cls == 0x04:  # ALU
                src = x if code & 0x08 else k
                op = code & 0xF0
                if op == 0x00:
                    a = (a + src) & _MASK
                elif op == 0x10:
                    a = (a - src) & _MASK
                elif op == 0x20:
                    a = (a * src) & _MASK
                elif op == 0x30:
                    if src == 0:
                        return 0
                    a = a // src
                elif op == 0x40:
                    a = a | src
                elif op == 0x50:
                    a = a & src
                elif op == 0x60:
                    a = (a << src) & _MASK
                elif op == 0x70:
                    a = a >> src
                elif op == 0x80:
                    a = (-a) & _MASK
                else:
                    raise NotImplementedError(hex(code))
            elif cls == 0x05:  # JMP
                op = code & 0xF0
                if op == 0x00:
                    pc += k
                    continue
                src = x if code & 0x08 else k
                if op == 0x10:
                    taken = a == src
                elif op == 0x20:
                    taken = a > src
                elif op == 0x30:
                    taken = a >= src
                elif op == 0x40:
                    taken = bool(a & src)
                else:
                    raise NotImplementedError(hex(code))
                pc += jt if taken else jf
            elif cls == 0x06:  # RET
                return a if code & 0x18 == 0x10 else k
            elif cls == 0x07:  # MISC
                if code == 0x07:
                    x = a
                elif code == 0x87:
                    a = x
                else:
                    raise NotImplementedError(hex(code))
    except OutOfFrame:
        return 0
