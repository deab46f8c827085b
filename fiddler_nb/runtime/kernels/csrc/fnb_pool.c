/* fiddler_nb CPU kernels: entry points, run-time ISA dispatch, a scalar reference and a small
 * pthread pool (rows split across threads, each writing its own slice of y).
 *
 * Built at first use by fiddler_nb/runtime/kernels/native_build.py with the machine's C compiler
 * and loaded with ctypes (whose calls release the GIL). Baseline flags only: the SIMD variants
 * live in fnb_isa.c, compiled once per ISA; a variant that did not compile is a NULL weak symbol.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include "fnb_kernels.h"

void fnb_rows_generic(const fnb_job *j, int64_t r0, int64_t r1) __attribute__((weak));
void fnb_rows_avx2(const fnb_job *j, int64_t r0, int64_t r1) __attribute__((weak));
void fnb_rows_avx512(const fnb_job *j, int64_t r0, int64_t r1) __attribute__((weak));
void fnb_rows_avx512vnni(const fnb_job *j, int64_t r0, int64_t r1) __attribute__((weak));
int fnb_amx_built_avx512vnni(void) __attribute__((weak));

/* ---- the plain scalar reference every variant is tested against --------------------------- */
static float ref_weight(const fnb_job *j, int64_t r, int64_t k) {
    const int64_t K = j->K;
    switch (j->wkind) {
    case FNB_F32: return ((const float *)j->w)[r * K + k];
    case FNB_BF16: return fnb_bf16_to_f32(((const uint16_t *)j->w)[r * K + k]);
    case FNB_F16: return fnb_f16_to_f32(((const uint16_t *)j->w)[r * K + k]);
    case FNB_I8ROW: return (float)((const int8_t *)j->w)[r * K + k];  /* scale after the sum */
    case FNB_I8GRP:
        return (float)((const int8_t *)j->w)[r * K + k] *
               fnb_f16_to_f32(((const uint16_t *)j->scale)[r * (K / j->group) + k / j->group]);
    default: {
        uint8_t b = ((const uint8_t *)j->w)[(r * K + k) / 2];
        int u = (k & 1) ? (b >> 4) : (b & 0x0F);
        return (float)(u - 8) * fnb_load_dt(j->scale, j->sdtype, r * (K / j->group) + k / j->group);
    }
    }
}

/* Whether a variant reads int4 activations permuted within each 32-block (even k, then odd k):
 * AVX-512 widens 16 low and 16 high nibbles at once; the others read k in order. */
int fnb_i4_permuted(int isa) { return isa == FNB_ISA_AVX512 || isa == FNB_ISA_AVX512VNNI; }

/* quantized activations: the exact sum of every block's integer products, scaled in double */
static void ref_rows_q8(const fnb_job *j, int64_t r0, int64_t r1) {
    const int64_t K = j->K, nblk = K / FNB_BLOCK;
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < j->T; t++) {
            double s = 0;
            for (int64_t b = 0; b < nblk; b++) {
                int64_t dot = 0;
                for (int kk = 0; kk < FNB_BLOCK; kk++) {
                    const int64_t k = b * FNB_BLOCK + kk;
                    int w, qi = kk;
                    if (j->wkind == FNB_I4GRP) {
                        uint8_t byte = ((const uint8_t *)j->w)[(r * K + k) / 2];
                        w = ((k & 1) ? (byte >> 4) : (byte & 0x0F)) - 8;
                        qi = fnb_perm32(kk);
                    } else {
                        w = ((const int8_t *)j->w)[r * K + k];
                    }
                    dot += (int64_t)w * j->xq[(int64_t)t * K + b * FNB_BLOCK + qi];
                }
                s += (double)dot * fnb_block_scale(j, r, b) * j->xs[(int64_t)t * nblk + b];
            }
            if (j->wkind == FNB_I8ROW) s *= fnb_load_dt(j->scale, j->sdtype, r);
            fnb_store_dt(j->y, j->ydtype, (int64_t)t * j->ldy + r, (float)s);
        }
}

static void fnb_rows_ref(const fnb_job *j, int64_t r0, int64_t r1) {
    if (j->xq) { ref_rows_q8(j, r0, r1); return; }
    if (j->dequant) {
        for (int64_t r = r0; r < r1; r++)
            for (int64_t k = 0; k < j->K; k++) {
                float w = ref_weight(j, r, k);
                if (j->wkind == FNB_I8ROW) w *= fnb_load_dt(j->scale, j->sdtype, r);
                fnb_store_dt(j->y, j->ydtype, r * j->ldy + k, w);
            }
        return;
    }
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < j->T; t++) {
            double s = 0;  /* double: the reference is the exact sum, up to one rounding */
            for (int64_t k = 0; k < j->K; k++)
                s += (double)ref_weight(j, r, k) * j->x[(int64_t)t * j->K + k];
            float v = (float)s;
            if (j->wkind == FNB_I8ROW) v = (float)(s * fnb_load_dt(j->scale, j->sdtype, r));
            fnb_store_dt(j->y, j->ydtype, (int64_t)t * j->ldy + r, v);
        }
}

/* ---- ISA dispatch ------------------------------------------------------------------------- */
fnb_rows_fn fnb_variant(int isa) {
    switch (isa) {
    case FNB_ISA_REF: return fnb_rows_ref;
    case FNB_ISA_GENERIC: return fnb_rows_generic;
#if defined(__x86_64__) || defined(__i386__)
    case FNB_ISA_AVX2:
        if (fnb_rows_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c"))
            return fnb_rows_avx2;
        return NULL;
    case FNB_ISA_AVX512:
        if (fnb_rows_avx512 && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c"))
            return fnb_rows_avx512;
        return NULL;
    case FNB_ISA_AVX512VNNI:
        if (fnb_rows_avx512vnni && fnb_variant(FNB_ISA_AVX512) &&
            __builtin_cpu_supports("avx512vnni"))
            return fnb_rows_avx512vnni;
        return NULL;
#endif
    default: return NULL;
    }
}

/* 1 if the variant exists in this build and the CPU runs it */
int fnb_isa_supported(int isa) { return fnb_variant(isa) != NULL; }

/* the best variant this CPU runs */
int fnb_best_isa(void) {
    for (int isa = FNB_ISA_COUNT - 1; isa > FNB_ISA_REF; isa--)
        if (fnb_variant(isa)) return isa;
    return FNB_ISA_REF;
}

/* ---- the thread pool ---------------------------------------------------------------------- */
#define MAX_THREADS 256
#define CHUNK_BYTES (256 << 10)  /* rows per work item: ~256 KiB of weights (L2-sized) */
#define SERIAL_BYTES (512 << 10) /* smaller matrices run on the calling thread alone */

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;  /* one call at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static int started;             /* workers running */
static int wanted;              /* workers taking part in the current job */
static unsigned long generation;
static int active;              /* workers still in the current job */
#define MAX_JOBS 1024
static struct {
    fnb_rows_fn fn;
    const fnb_job *jobs;        /* njobs jobs (one per expert in a layer call) */
    int njobs;
    int64_t chunk_rows[MAX_JOBS];
    int64_t first_chunk[MAX_JOBS + 1];  /* prefix sums of each job's chunk count */
    atomic_llong next;          /* the next free chunk, over all jobs */
} task;

static void run_chunks(void) {
    const int64_t total = task.first_chunk[task.njobs];
    int at = 0;
    for (;;) {
        int64_t c = atomic_fetch_add(&task.next, 1);
        if (c >= total) return;
        while (c >= task.first_chunk[at + 1]) at++;  /* chunks are handed out in order */
        const fnb_job *j = &task.jobs[at];
        int64_t r0 = (c - task.first_chunk[at]) * task.chunk_rows[at];
        int64_t r1 = r0 + task.chunk_rows[at] < j->N ? r0 + task.chunk_rows[at] : j->N;
        task.fn(j, r0, r1);
    }
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (generation == seen || id >= wanted) {
            if (generation != seen) seen = generation;  /* a job without this worker */
            pthread_cond_wait(&wake, &mu);
        }
        seen = generation;
        pthread_mutex_unlock(&mu);
        run_chunks();
        pthread_mutex_lock(&mu);
        if (--active == 0) pthread_cond_signal(&done);
    }
    return NULL;
}

/* A forked child has none of the parent's workers: start again from zero. */
static void reset_after_fork(void) {
    pthread_mutex_init(&call_mu, NULL);
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&wake, NULL);
    pthread_cond_init(&done, NULL);
    started = wanted = active = 0;
}
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void register_fork(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

static atomic_int failed;  /* a worker could not get scratch memory (fnb_fail) */
void fnb_fail(void) { atomic_store(&failed, 1); }

/* Run every row of `njobs` jobs, split in chunks over `threads` threads (the caller too).
 * Returns 0, or -2 when a worker ran out of memory (its rows are not written). */
int fnb_run_parallel(fnb_rows_fn fn, const fnb_job *jobs, int njobs, int threads) {
    int64_t bytes = 0;
    atomic_store(&failed, 0);
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    task.fn = fn; task.jobs = jobs; task.njobs = njobs;
    task.first_chunk[0] = 0;
    for (int i = 0; i < njobs; i++) {
        int64_t row = fnb_row_bytes(jobs[i].wkind, jobs[i].K);
        int64_t chunk = CHUNK_BYTES / (row + 1);
        const int64_t whole = jobs[i].tile ? FNB_TILE_CHUNK_ROWS : 4;  /* whole row tiles */
        chunk = chunk < whole ? whole : chunk / whole * whole;
        task.chunk_rows[i] = chunk;
        task.first_chunk[i + 1] = task.first_chunk[i] + (jobs[i].N + chunk - 1) / chunk;
        bytes += row * jobs[i].N;
    }
    atomic_store(&task.next, 0);
    if (threads == 1 || bytes < SERIAL_BYTES) {
        run_chunks();
        return atomic_load(&failed) ? -2 : 0;
    }
    pthread_mutex_lock(&mu);
    while (started < threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker, (void *)(intptr_t)started);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        started++;
    }
    wanted = threads - 1 < started ? threads - 1 : started;
    active = wanted;
    generation++;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&mu);
    run_chunks();  /* the caller works too */
    pthread_mutex_lock(&mu);
    while (active > 0) pthread_cond_wait(&done, &mu);
    pthread_mutex_unlock(&mu);
    return atomic_load(&failed) ? -2 : 0;
}

/* ---- the entry point ---------------------------------------------------------------------- */
/* x [T, ldx] (xdtype) -> dst [T, K] fp32; FNB_I4GRP order (each 32-block: even k, then odd k)
 * when `permute` */
void fnb_widen(const void *x, int xdtype, int64_t ldx, int T, int64_t K, int permute,
               float *dst) {
    for (int t = 0; t < T; t++) {
        float *d = dst + (int64_t)t * K;
        if (permute) {
            for (int64_t k = 0; k < K; k++)
                d[(k / FNB_BLOCK) * FNB_BLOCK + (k & 1) * (FNB_BLOCK / 2) + (k % FNB_BLOCK) / 2] =
                    fnb_load_dt(x, xdtype, (int64_t)t * ldx + k);
        } else if (xdtype == FNB_DT_F32) {
            memcpy(d, (const float *)x + (int64_t)t * ldx, sizeof(float) * (size_t)K);
        } else {
            for (int64_t k = 0; k < K; k++) d[k] = fnb_load_dt(x, xdtype, (int64_t)t * ldx + k);
        }
    }
}

/* the elements of T rows of K in the tile kernels' step-major layout [ceil(K / step)][T][step] */
int64_t fnb_packed_elems(int T, int64_t K, int64_t step) {
    return (K + step - 1) / step * step * T;
}

/* x [T, K] (esize-byte elements, contiguous) -> dst in that layout */
void fnb_pack_steps(const void *x, int64_t esize, int T, int64_t K, int64_t step, void *dst) {
    for (int64_t k0 = 0; k0 < K; k0 += step) {
        const int64_t n = k0 + step < K ? step : K - k0;
        for (int t = 0; t < T; t++)
            memcpy((char *)dst + ((k0 / step) * T + t) * step * esize,
                   (const char *)x + ((int64_t)t * K + k0) * esize, (size_t)(n * esize));
    }
}

/* x [T, K] fp32 (contiguous) -> the fp32 tile kernels' layout (fnb_kernels.h), zero-padded */
void fnb_pack_op(const float *x, int T, int64_t K, int nr, float *dst) {
    const int64_t tiles = (T + nr - 1) / nr;
    memset(dst, 0, sizeof(float) * (size_t)fnb_op_packed_elems(T, K, nr));
    for (int t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++)
            dst[((k / FNB_OP_KC * tiles + t / nr) * FNB_OP_KC + k % FNB_OP_KC) * nr + t % nr] =
                x[(int64_t)t * K + k];
}

/* group = 1 for kinds without groups; else the log2(group / 32) shift, or -1 if unusable */
int fnb_group_shift(int wkind, int64_t group, int64_t K) {
    if (wkind != FNB_I8GRP && wkind != FNB_I4GRP) return 0;
    if (group <= 0 || group % FNB_BLOCK || K % group) return -1;
    int shift = 0;
    while ((FNB_BLOCK << shift) < group) shift++;
    return (FNB_BLOCK << shift) == group ? shift : -1;  /* blocks per group: a power of two */
}

/* x [T, K] fp32 -> q [T, K] int8 and d [T, K/32]: per 32-block d = max|x| / 127 and
 * q = round(x / d) (ties to even), so |x - q d| <= d / 2; an all-zero block gets d = 0, q = 0.
 * For int4 weights each block's q is stored [16 even k][16 odd k] (the int4 kernels' order).
 * c (or NULL): the correction vectors of fnb_job.xc for the weight kind. */
void fnb_quantize_q8(const float *x, int T, int64_t K, int wkind, int8_t *q, float *d,
                     int32_t *c) {
    const int64_t nblk = K / FNB_BLOCK;
    const int permute = wkind == FNB_I4GRP, offset = wkind == FNB_I4GRP ? 8 : 128;
    for (int64_t i = 0; i < (int64_t)T * nblk; i++) {
        const float *xb = x + i * FNB_BLOCK;
        int8_t *qb = q + i * FNB_BLOCK;
        float amax = 0;
        int32_t sum = 0;
        for (int kk = 0; kk < FNB_BLOCK; kk++) amax = fmaxf(amax, fabsf(xb[kk]));
        const float di = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
        for (int kk = 0; kk < FNB_BLOCK; kk++) {
            float v = nearbyintf(xb[kk] * inv);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            qb[permute ? fnb_perm32(kk) : kk] = (int8_t)v;
            sum += (int32_t)v;
        }
        d[i] = di;
        if (c) {
            memset(c + i * 8, 0, 8 * sizeof(int32_t));
            c[i * 8] = -offset * sum;
        }
    }
}

/* 1 when the avx512vnni variant was built with the AMX tile kernel, the CPU has AMX-BF16
 * (CPUID leaf 7: AMX-BF16 and AMX-TILE; XCR0: the OS saves the tile state) and Linux grants this
 * process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once; oneDNN asks too) */
#if defined(__x86_64__) && defined(__linux__)
#define FNB_ARCH_REQ_XCOMP_PERM 0x1023
#define FNB_XFEATURE_XTILEDATA 18
static int amx_state = -1;
static void amx_probe(void) {
    unsigned a, b, c, d;
    amx_state = 0;
    if (!fnb_amx_built_avx512vnni || !fnb_amx_built_avx512vnni()) return;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 22) & 1) || !((d >> 24) & 1)) return;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return;  /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return;  /* XTILECFG and XTILEDATA enabled by the OS */
    amx_state = syscall(SYS_arch_prctl, FNB_ARCH_REQ_XCOMP_PERM, FNB_XFEATURE_XTILEDATA) == 0;
}
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
int fnb_amx_ready(void) {
    const char *setting = getenv("FIDDLER_NB_AMX");  /* read per call: tests switch it */
    if (setting && !strcmp(setting, "0")) return 0;
    pthread_once(&amx_once, amx_probe);
    return amx_state == 1;
}
#else
int fnb_amx_ready(void) { return 0; }
#endif

/* 1 when bf16 activations meet the weights in vdpbf16ps on this ISA and CPU: bf16 weights as
 * stored (not in fp32 tiles), or with FNB_TILE_BF16 integer kinds widened to bf16 panels -- the
 * weights a bf16 reference holds. fp32 / fp16 weights never: bf16 would round them. */
int fnb_bf16_dot(int isa, int wkind, int tile) {
#if defined(__x86_64__) || defined(__i386__)
    const int kind_ok = tile == FNB_TILE_NONE ? wkind == FNB_BF16
        : (tile == FNB_TILE_BF16 || (tile == FNB_TILE_AMX && fnb_amx_ready())) &&
          (wkind == FNB_BF16 || wkind == FNB_I8ROW || wkind == FNB_I8GRP || wkind == FNB_I4GRP);
    return kind_ok && isa == FNB_ISA_AVX512VNNI && fnb_variant(isa) &&
           __builtin_cpu_supports("avx512bf16");
#else
    (void)isa; (void)wkind; (void)tile;
    return 0;
#endif
}

/* fp32 values that are bf16 numbers (widened bf16 activations, rounded products) -> bf16 */
void fnb_to_bf16(const float *x, int64_t n, uint16_t *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = fnb_f32_to_bf16(x[i]);
}

/* 1 when the quantized-activation kernels run this kind and K */
int fnb_q8_supported(int wkind, int64_t K) {
    return (wkind == FNB_I8ROW || wkind == FNB_I8GRP || wkind == FNB_I4GRP) && K > 0 &&
           K % FNB_BLOCK == 0;
}

/* growable per-thread scratch */
#define SCRATCH_SLOTS 18  /* 12-17: the tile kernels' panels, partial sums, packed x */
float *fnb_scratch(int slot, int64_t floats) {
    static __thread float *buf[SCRATCH_SLOTS];
    static __thread int64_t cap[SCRATCH_SLOTS];
    if (cap[slot] < floats) {
        free(buf[slot]);
        buf[slot] = malloc(sizeof(float) * (size_t)floats + 64);
        cap[slot] = buf[slot] ? floats : 0;
    }
    return buf[slot];
}

static int linear_impl(int isa, int threads, int wkind, const void *w, const void *scale,
                       int sdtype, int64_t group, int64_t N, int64_t K, const void *x, int xdtype,
                       int64_t ldx, int T, void *y, int ydtype, int64_t ldy, int q8,
                       int tile) {
    fnb_rows_fn fn = fnb_variant(isa);
    int shift = fnb_group_shift(wkind, group, K);
    if (!fn || T < 0 || N < 0 || K < 0 || wkind < FNB_F32 || wkind > FNB_I4GRP || shift < 0 ||
        (q8 && !fnb_q8_supported(wkind, K)))
        return -1;
    if (wkind != FNB_I8GRP && wkind != FNB_I4GRP) group = 1;
    if (isa == FNB_ISA_REF) tile = FNB_TILE_NONE;  /* the scalar reference has no tiles */
    if (T == 0 || N == 0) return 0;
    pthread_once(&fork_once, register_fork);
    pthread_mutex_lock(&call_mu);
    float *xbuf = fnb_scratch(0, (int64_t)T * K);
    int8_t *xq = q8 ? (int8_t *)fnb_scratch(4, (int64_t)T * K / 4 + 1) : NULL;
    float *xs = q8 ? fnb_scratch(5, (int64_t)T * K / FNB_BLOCK + 1) : NULL;
    int32_t *xc = q8 ? (int32_t *)fnb_scratch(8, (int64_t)T * K / 4 + 1) : NULL;
    if (!xbuf || (q8 && (!xq || !xs || !xc))) { pthread_mutex_unlock(&call_mu); return -2; }
    fnb_widen(x, xdtype, ldx, T, K, !q8 && wkind == FNB_I4GRP && fnb_i4_permuted(isa), xbuf);
    if (q8) fnb_quantize_q8(xbuf, T, K, wkind, xq, xs, xc);
    uint16_t *xh = NULL;  /* bf16 x bf16: the activations as they came, contiguous */
    if (!q8 && xdtype == FNB_DT_BF16 && fnb_bf16_dot(isa, wkind, tile)) {
        xh = (uint16_t *)fnb_scratch(10, (int64_t)T * K / 2 + 1);
        if (!xh) { pthread_mutex_unlock(&call_mu); return -2; }
        for (int t = 0; t < T; t++)
            memcpy(xh + (int64_t)t * K, (const uint16_t *)x + (int64_t)t * ldx, 2 * (size_t)K);
    }
    const float *xk = xbuf;
    if (tile && K % FNB_BLOCK == 0) {  /* the tile kernels' layouts (fnb_kernels.h) */
        const int bf = xh != NULL, nr = fnb_op_nr(isa);
        const int64_t step = fnb_tile_step();
        const int64_t elems = bf ? fnb_packed_elems(T, K, step) / 2 + 1
                                 : fnb_op_packed_elems(T, K, nr);
        void *packed = fnb_scratch(14, elems);
        if (!packed) { pthread_mutex_unlock(&call_mu); return -2; }
        if (bf) fnb_pack_steps(xh, 2, T, K, step, packed);
        else fnb_pack_op(xbuf, T, K, nr, packed);
        if (bf) xh = packed; else xk = packed;
    }
    fnb_job j = {wkind, w, scale, sdtype, group, shift, K / group, N, K, xk, T, y, ydtype, ldy,
                 xq, xs, xc, 0, xh, tile};
    int rc = fnb_run_parallel(fn, &j, 1, threads);
    pthread_mutex_unlock(&call_mu);
    return rc;
}

/* y [T, ldy] (ydtype) = x [T, ldx] (xdtype) @ W^T. Returns 0, or -1 for bad arguments / an ISA
 * this CPU or build lacks, -2 when out of memory. */
int fnb_linear(int isa, int threads, int wkind, const void *w, const void *scale, int sdtype,
               int64_t group, int64_t N, int64_t K, const void *x, int xdtype, int64_t ldx,
               int T, void *y, int ydtype, int64_t ldy) {
    return linear_impl(isa, threads, wkind, w, scale, sdtype, group, N, K, x, xdtype, ldx, T, y,
                       ydtype, ldy, 0, 0);
}

/* fnb_linear with the activations quantized per 32-block to int8 (fnb_kernels.h) */
int fnb_linear_q8(int isa, int threads, int wkind, const void *w, const void *scale, int sdtype,
                  int64_t group, int64_t N, int64_t K, const void *x, int xdtype, int64_t ldx,
                  int T, void *y, int ydtype, int64_t ldy) {
    return linear_impl(isa, threads, wkind, w, scale, sdtype, group, N, K, x, xdtype, ldx, T, y,
                       ydtype, ldy, 1, 0);
}

/* fnb_linear for many tokens: each weight widened once per call, register tiles over the
 * tokens (fnb_isa.c). tile: FNB_TILE_F32 (fp32 outer products, exact) or FNB_TILE_BF16 (bf16
 * activations on AVX512-BF16 meet bf16 panels -- integer weights rounded to bf16, as the
 * dequantizing kernels round them -- in vdpbf16ps; elsewhere fp32) or FNB_TILE_AMX (the same
 * bf16 panels in AMX tiles where fnb_amx_ready; elsewhere fp32) */
int fnb_linear_tile(int isa, int threads, int wkind, const void *w, const void *scale,
                    int sdtype, int64_t group, int64_t N, int64_t K, const void *x, int xdtype,
                    int64_t ldx, int T, void *y, int ydtype, int64_t ldy, int tile) {
    if (tile != FNB_TILE_F32 && tile != FNB_TILE_BF16 && tile != FNB_TILE_AMX) return -1;
    return linear_impl(isa, threads, wkind, w, scale, sdtype, group, N, K, x, xdtype, ldx, T, y,
                       ydtype, ldy, 0, tile);
}

/* y [N, K] (ydtype) = the weights of an integer kind (I8ROW, I8GRP, I4GRP), rows split across
 * threads. Returns 0, or -1 for bad arguments. */
int fnb_dequantize(int isa, int threads, int wkind, const void *w, const void *scale, int sdtype,
                   int64_t group, int64_t N, int64_t K, void *y, int ydtype) {
    fnb_rows_fn fn = fnb_variant(isa);
    int shift = fnb_group_shift(wkind, group, K);
    if (!fn || N < 0 || K < 0 || shift < 0 ||
        (wkind != FNB_I8ROW && wkind != FNB_I8GRP && wkind != FNB_I4GRP))
        return -1;
    if (wkind == FNB_I8ROW) group = 1;
    if (N == 0 || K == 0) return 0;
    pthread_once(&fork_once, register_fork);
    pthread_mutex_lock(&call_mu);
    fnb_job j = {wkind, w, scale, sdtype, group, shift, K / group, N, K, NULL, 0, y, ydtype, K,
                 NULL, NULL, NULL, 1};
    int rc = fnb_run_parallel(fn, &j, 1, threads);
    pthread_mutex_unlock(&call_mu);
    return rc;
}

/* for fnb_layer.c: one call at a time through the pool */
void fnb_lock(void) { pthread_once(&fork_once, register_fork); pthread_mutex_lock(&call_mu); }
void fnb_unlock(void) { pthread_mutex_unlock(&call_mu); }
