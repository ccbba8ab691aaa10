// Peak throughput of Intel AMX tile instructions (int8 TDPBSSD, bf16 TDPBF16PS) on all cores.
//
// Why: the shared cpu_peak tool measures AVX-512 (FMA, BF16, VNNI) only. On a CPU with AMX,
// oneDNN (OpenVINO, torch) runs int8 and bf16 convolutions on the tile unit, so an engine can
// exceed that "bound" and the share of it says nothing. This kernel gives the AMX figure to
// divide by instead (benchmarks/ingest.py --cpu-peak FILE reads its "int8 amx:" line).
//
// Each thread keeps four accumulator tiles busy (C0..C3 += A{0,1} x B{0,1}), so the loop is
// bound by the unit's throughput, not by one accumulation's latency. One TDPBSSD is
// 16 x 16 x 64 multiply-adds (2 ops each); one TDPBF16PS is 16 x 16 x 32.
// Build and run: benchmarks/amx_peak.sh (Linux >= 5.16: a process must ask the kernel for the
// tile state before its first tile instruction).
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define ITERS 20000000L

struct tile_config {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("amx-tile"))) static void configure(void) {
    struct tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile,amx-int8"))) static int32_t int8_kernel(long iters) {
    static __thread int8_t a[16 * 64], b[16 * 64];
    static __thread int32_t c[16 * 16];
    memset(a, 1, sizeof a);
    memset(b, 1, sizeof b);
    configure();
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, a, 64); _tile_loadd(5, a, 64);
    _tile_loadd(6, b, 64); _tile_loadd(7, b, 64);
    for (long it = 0; it < iters; it++) {
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    _tile_release();
    return c[0];
}

__attribute__((target("amx-tile,amx-bf16"))) static float bf16_kernel(long iters) {
    static __thread uint16_t a[16 * 32], b[16 * 32];
    static __thread float c[16 * 16];
    for (int i = 0; i < 16 * 32; i++) a[i] = b[i] = 0x3380;  // a small bf16 value
    configure();
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, a, 64); _tile_loadd(5, a, 64);
    _tile_loadd(6, b, 64); _tile_loadd(7, b, 64);
    for (long it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    _tile_release();
    return c[0];
}

int main(void) {
    if (!__builtin_cpu_supports("amx-int8") || !__builtin_cpu_supports("amx-bf16")) {
        fprintf(stderr, "this CPU reports no AMX (amx-int8, amx-bf16): nothing to measure\n");
        return 2;
    }
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
        perror("the kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)");
        return 3;
    }
    int nt = omp_get_max_threads();
    volatile int32_t sink_i = 0;
    volatile float sink_f = 0;
    double t0 = now();
#pragma omp parallel reduction(+ : sink_i)
    sink_i += int8_kernel(ITERS / 100);  // warm-up: the unit's clock and the tile state
    t0 = now();
#pragma omp parallel reduction(+ : sink_i)
    sink_i += int8_kernel(ITERS);
    double dt = now() - t0;
    printf("threads: %d\n", nt);
    printf("int8 amx: %.0f GOP/s\n", 4.0 * 16 * 16 * 64 * 2 * ITERS * nt / dt / 1e9);
    t0 = now();
#pragma omp parallel reduction(+ : sink_f)
    sink_f += bf16_kernel(ITERS);
    dt = now() - t0;
    printf("bf16 amx: %.0f GFLOP/s\n", 4.0 * 16 * 16 * 32 * 2 * ITERS * nt / dt / 1e9);
    return 0;
}
