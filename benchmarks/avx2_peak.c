// Peak throughput of AVX2 fp32 FMA and of AVX2 int8 multiply-adds (no VNNI) on all cores.
//
// Why: the shared cpu_peak tool measures AVX-512 units only and refuses on CPUs without them
// (AMD Zen 2/3, many Intel desktop and older server parts), which are common on instrument PCs.
// There oneDNN (OpenVINO, torch) and ONNX Runtime's MLAS run int8 convolutions as u8 x s8 pairs
// summed into 16 bits (vpmaddubsw), widened and summed into 32 bits (vpmaddwd with ones), then
// accumulated (vpaddd): 32 multiply-adds per three instructions, two of them on the multiply
// ports. This kernel times exactly that sequence, and fp32 FMA beside it, so an engine's speed
// can be quoted as a share of this machine's bound (benchmarks/ingest.py --cpu-peak FILE reads
// its "int8 avx2:" line).
//
// Each thread keeps several independent accumulators busy, so the loops are bound by the units'
// throughput, not by one accumulation's latency; an empty asm statement tells the compiler the
// inputs change every iteration, so it cannot hoist the multiplies out of the loop.
// Build and run: benchmarks/avx2_peak.sh.
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define ITERS 400000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx2,fma"))) static float fp32_kernel(long iters) {
    __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-9f);
    // distinct starting values: identical chains would be merged into one by the compiler
    __m256 c0 = _mm256_set1_ps(0.f), c1 = _mm256_set1_ps(1.f), c2 = _mm256_set1_ps(2.f),
           c3 = _mm256_set1_ps(3.f), c4 = _mm256_set1_ps(4.f), c5 = _mm256_set1_ps(5.f),
           c6 = _mm256_set1_ps(6.f), c7 = _mm256_set1_ps(7.f), c8 = _mm256_set1_ps(8.f),
           c9 = _mm256_set1_ps(9.f);
    for (long it = 0; it < iters; it++) {
        c0 = _mm256_fmadd_ps(a, b, c0); c1 = _mm256_fmadd_ps(a, b, c1);
        c2 = _mm256_fmadd_ps(a, b, c2); c3 = _mm256_fmadd_ps(a, b, c3);
        c4 = _mm256_fmadd_ps(a, b, c4); c5 = _mm256_fmadd_ps(a, b, c5);
        c6 = _mm256_fmadd_ps(a, b, c6); c7 = _mm256_fmadd_ps(a, b, c7);
        c8 = _mm256_fmadd_ps(a, b, c8); c9 = _mm256_fmadd_ps(a, b, c9);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                             _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(_mm256_add_ps(c6, c7),
                                                                               _mm256_add_ps(c8, c9))));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

__attribute__((target("avx2"))) static int32_t int8_kernel(long iters) {
    __m256i a0 = _mm256_set1_epi8(3), a1 = _mm256_set1_epi8(5), b = _mm256_set1_epi8(-2);
    __m256i ones = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
    for (long it = 0; it < iters; it++) {
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(b));
        __m256i t0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, b), ones);
        __m256i t1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, b), ones);
        __m256i t2 = _mm256_madd_epi16(_mm256_maddubs_epi16(b, a0), ones);
        __m256i t3 = _mm256_madd_epi16(_mm256_maddubs_epi16(b, a1), ones);
        c0 = _mm256_add_epi32(c0, t0); c1 = _mm256_add_epi32(c1, t1);
        c2 = _mm256_add_epi32(c2, t2); c3 = _mm256_add_epi32(c3, t3);
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3));
    return _mm256_extract_epi32(s, 0);
}

int main(void) {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        fprintf(stderr, "this CPU reports no AVX2 with FMA: nothing to measure\n");
        return 2;
    }
    if (__builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni"))
        fprintf(stderr, "note: this CPU has VNNI (vpdpbusd), which int8 engines use instead: the int8 figure below "
                        "understates its bound (../shared/tools/cpu_peak.sh measures AVX-512 VNNI)\n");
    int nt = omp_get_max_threads();
    volatile float sink_f = 0;
    volatile int32_t sink_i = 0;
#pragma omp parallel reduction(+ : sink_f)
    sink_f += fp32_kernel(ITERS / 50);  // warm-up: the cores' clocks
    double t0 = now();
#pragma omp parallel reduction(+ : sink_f)
    sink_f += fp32_kernel(ITERS);
    double dt = now() - t0;
    printf("threads: %d\n", nt);
    printf("fp32 avx2 fma: %.0f GFLOP/s\n", 10.0 * 8 * 2 * ITERS * nt / dt / 1e9);
    t0 = now();
#pragma omp parallel reduction(+ : sink_i)
    sink_i += int8_kernel(ITERS);
    dt = now() - t0;
    // 4 x vpmaddubsw per iteration, each 32 u8 x s8 multiply-adds (2 ops each)
    printf("int8 avx2: %.0f GOP/s\n", 4.0 * 32 * 2 * ITERS * nt / dt / 1e9);
    return 0;
}
