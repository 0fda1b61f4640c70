/* The peak multiply-accumulate rate of this x86 CPU's AVX2 instructions, as benchmarks/int8_bound.py uses it.

   INT8: vpmaddubsw (u8 x s8 pairs summed to s16), vpmaddwd against ones (pairs of s16 summed to s32), vpaddd
   into an s32 accumulator: 32 multiply-accumulates per ymm triple. This is the dot-product sequence x86 CPUs
   without VNNI have (VNNI's vpdpbusd does the same in one instruction). FP32: vfmadd231ps, 8 per instruction.
   VNNI, where the CPU has AVX512-VNNI: vpdpbusd on zmm, 64 u8 x s8 multiply-accumulates per instruction (the
   instruction oneDNN's VNNI convolutions are built on; AMX tiles are not measured).
   Independent accumulator chains, no memory traffic: an upper bound no real kernel reaches.

   Build: cc -O2 -mavx2 -mfma -pthread int8_peak.c -o int8_peak
   Usage: int8_peak THREADS   prints "u8s8_gmacs=<G> fp32_gmacs=<G> threads=<N>", and " vnni_gmacs=<G>" with VNNI */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile int sink;

static void *int8_loop(void *arg) {
    (void)arg;
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(5), one = _mm256_set1_epi16(1);
    __m256i c0 = _mm256_set1_epi32(0), c1 = _mm256_set1_epi32(1), c2 = _mm256_set1_epi32(2), c3 = _mm256_set1_epi32(3);
    __m256i c4 = _mm256_set1_epi32(4), c5 = _mm256_set1_epi32(5), c6 = _mm256_set1_epi32(6), c7 = _mm256_set1_epi32(7);
    for (long i = 0; i < ITERS / 8; i++) {
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), one));
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(b, a), one));
        c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(_mm256_maddubs_epi16(a, a), one));
        c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(_mm256_maddubs_epi16(b, b), one));
        c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(_mm256_maddubs_epi16(a, one), one));
        c5 = _mm256_add_epi32(c5, _mm256_madd_epi16(_mm256_maddubs_epi16(one, a), one));
        c6 = _mm256_add_epi32(c6, _mm256_madd_epi16(_mm256_maddubs_epi16(b, one), one));
        c7 = _mm256_add_epi32(c7, _mm256_madd_epi16(_mm256_maddubs_epi16(one, b), one));
        __asm__ volatile("" : "+x"(a), "+x"(b)); /* keeps the compiler from hoisting the products */
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                 _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    sink = _mm256_extract_epi32(s, 0);
    return NULL;
}

static void *fp32_loop(void *arg) {
    (void)arg;
    __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
    __m256 c0 = _mm256_set1_ps(0), c1 = _mm256_set1_ps(1), c2 = _mm256_set1_ps(2), c3 = _mm256_set1_ps(3), c4 = _mm256_set1_ps(4);
    __m256 c5 = _mm256_set1_ps(5), c6 = _mm256_set1_ps(6), c7 = _mm256_set1_ps(7), c8 = _mm256_set1_ps(8), c9 = _mm256_set1_ps(9);
    for (long i = 0; i < ITERS / 10; i++) {
        c0 = _mm256_fmadd_ps(a, b, c0); c1 = _mm256_fmadd_ps(a, b, c1); c2 = _mm256_fmadd_ps(a, b, c2);
        c3 = _mm256_fmadd_ps(a, b, c3); c4 = _mm256_fmadd_ps(a, b, c4); c5 = _mm256_fmadd_ps(a, b, c5);
        c6 = _mm256_fmadd_ps(a, b, c6); c7 = _mm256_fmadd_ps(a, b, c7); c8 = _mm256_fmadd_ps(a, b, c8);
        c9 = _mm256_fmadd_ps(a, b, c9);
        __asm__ volatile("" : "+x"(a), "+x"(b));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)), _mm256_add_ps(c8, c9)));
    float out[8];
    _mm256_storeu_ps(out, s);
    sink = (int)out[0];
    return NULL;
}

/* 20 accumulators (zmm2..zmm21): vpdpbusd's latency (5 cycles) times two ports, with room to spare.
   Written in asm: in C the compiler spilled accumulators to the stack, which is not the instruction's rate. */
__attribute__((target("avx512f,avx512vnni"))) static void *vnni_loop(void *arg) {
    (void)arg;
    long n = ITERS / 20;
    __asm__ volatile(
        "vpternlogd $0xff, %%zmm0, %%zmm0, %%zmm0\n"
        "vpternlogd $0xff, %%zmm1, %%zmm1, %%zmm1\n"
        "1:\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm2\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm3\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm4\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm5\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm6\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm7\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm8\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm9\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm10\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm11\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm12\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm13\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm14\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm15\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm16\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm17\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm18\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm19\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm20\n"
            "vpdpbusd %%zmm1, %%zmm0, %%zmm21\n"
        "dec %0\n"
        "jnz 1b\n"
        : "+r"(n)
        :
        : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "cc");
    return NULL;
}

/* Best of three runs of `loop` on `threads` threads, in G multiply-accumulates per second. */
static double rate(void *(*loop)(void *), int threads, double macs_per_iter) {
    double best = 0;
    pthread_t tid[256];
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&tid[i], NULL, loop, NULL);
        for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
        double g = macs_per_iter * ITERS * threads / (now() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "threads must be 1..256\n");
        return 2;
    }
    double int8 = rate(int8_loop, threads, 32.0);
    double fp32 = rate(fp32_loop, threads, 8.0);
    printf("u8s8_gmacs=%.2f fp32_gmacs=%.2f threads=%d", int8, fp32, threads);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni")) printf(" vnni_gmacs=%.2f", rate(vnni_loop, threads, 64.0));
    printf("\n");
    return 0;
}
