/* fiddler_nb CPU kernels: shared declarations.
 *
 * y[t, n] = sum_k x[t, k] * W[n, k] for one stored expert matrix W [N, K], weight-only: the
 * weights are widened to fp32 and every product is accumulated in fp32.
 *
 * Weight kinds (what `data` / `scale` hold; N = output channels, K = inputs, G = group):
 *   FNB_F32   float [N, K]          FNB_BF16  bf16 [N, K]            FNB_F16 fp16 [N, K]
 *   FNB_I8ROW int8 [N, K], scale [N] (scale dtype: sdtype), w = q * s[n]
 *   FNB_I8GRP int8 [N, K], scale fp16 [N, K/G], w = q * s[n, k/G]   (GGUF Q8_0 at G = 32)
 *   FNB_I4GRP uint8 [N, K/2] nibbles (low = even k, u = q + 8), scale [N, K/G] (sdtype),
 *             w = (u - 8) * s[n, k/G]
 * Group kinds need K % G == 0 and G = 32 * 2^s (32, 64, 128, ...).
 *
 * Quantized activations (the "q8" kernels, only where the caller allows them): x is rounded
 * per 32-input block to int8 with one fp32 scale (xq = round(x / d), d = max|x| / 127, as GGUF's
 * Q8_0 does with an fp16 d), and each block's products are summed exactly in int32
 * (AVX2 maddubs, AVX512-VNNI vpdpbusd), then scaled by d * the weight's scale and summed in
 * fp32. Integer kinds only (I8ROW, I8GRP, I4GRP) and K % 32 == 0. For I4GRP every variant reads
 * the 32 quantized inputs of a block as [16 even k][16 odd k] (fnb_quantize_q8 does that).
 */
#ifndef FNB_KERNELS_H
#define FNB_KERNELS_H
#include <stdint.h>

enum { FNB_F32 = 0, FNB_BF16 = 1, FNB_F16 = 2, FNB_I8ROW = 3, FNB_I8GRP = 4, FNB_I4GRP = 5 };
enum { FNB_DT_F32 = 0, FNB_DT_BF16 = 1, FNB_DT_F16 = 2 };  /* activation / scale / output dtypes */
/* fnb_job.tile; FNB_TILE_AMX: the bf16 panels multiplied in AMX tiles (fnb_amx_ready) */
enum { FNB_TILE_NONE = 0, FNB_TILE_F32 = 1, FNB_TILE_BF16 = 2, FNB_TILE_AMX = 3 };
enum { FNB_ISA_REF = 0, FNB_ISA_GENERIC = 1, FNB_ISA_AVX2 = 2, FNB_ISA_AVX512 = 3,
       FNB_ISA_AVX512VNNI = 4, FNB_ISA_COUNT = 5 };
#define FNB_BLOCK 32  /* inputs per inner block; int4 activations are permuted per block */

typedef struct {
    int wkind;
    const void *w;
    const void *scale;
    int sdtype;
    int64_t group;
    int group_shift;  /* log2(group / 32) */
    int64_t groups_per_row;  /* K / group (no division in the inner loops) */
    int64_t N, K;
    const float *x;   /* [T, K] fp32 (FNB_I4GRP on AVX-512: 32-blocks as [16 even k][16 odd k]) */
    int T;
    void *y;          /* [T, ldy] in ydtype */
    int ydtype;
    int64_t ldy;
    const int8_t *xq; /* quantized activations [T, K] (I4GRP: blocks permuted), or NULL */
    const float *xs;  /* their scales [T, K / 32] */
    const int32_t *xc;  /* [T, K / 32, 8]: lane 0 of each block -offset * sum(xq of the block),
                           lanes 1-7 zero (offset: 128 for int8 weights, 8 for int4; the
                           avx512vnni kernels read unsigned weights w + offset) */
    int dequant;      /* 1: no product; write the weights themselves, y [N, K] in ydtype */
    const uint16_t *xh; /* FNB_BF16 weights with bf16 activations [T, K] on a CPU with
                           AVX512-BF16 (fnb_bf16_dot): vdpbf16ps on both as stored, else NULL;
                           with tile FNB_TILE_BF16, for integer kinds too (bf16 panels) */
    int tile;         /* many tokens: each weight widened once per call, register tiles
                         (fnb_isa.c): fp32 outer products (FNB_TILE_F32, or FNB_TILE_BF16 where
                         xh is not set; x packed by fnb_pack_op) or bf16 panels (FNB_TILE_BF16
                         with xh, packed step-major by fnb_pack_steps); 0: none */
} fnb_job;

/* The fp32 tile kernels multiply as outer products: per input k, a vector of rows times each
 * token's x[k] broadcast, accumulators [rows][tokens] in registers (no partial sums per lane).
 * x is packed per FNB_OP_KC inputs and fnb_op_nr(isa) tokens: [ceil(K / KC)][ceil(T / NR)][KC][NR],
 * zero-padded (fnb_pack_op). */
#define FNB_OP_KC 128
#define FNB_TILE_CHUNK_ROWS 32  /* a tile job's work items: whole 32-row blocks */
static inline int fnb_op_nr(int isa) {
    return isa == FNB_ISA_AVX512 || isa == FNB_ISA_AVX512VNNI ? 12 : 6;
}
static inline int64_t fnb_op_packed_elems(int T, int64_t K, int nr) {
    return (K + FNB_OP_KC - 1) / FNB_OP_KC * ((T + nr - 1) / nr) * FNB_OP_KC * nr;
}

/* inputs per step of the bf16 tile kernels: 2 KiB of a row (1024 bf16), so a step's slice of a
 * panel and a token tile fit in L1 together */
#define FNB_TILE_STEP_BYTES 2048
static inline int64_t fnb_tile_step(void) { return FNB_TILE_STEP_BYTES / 2; }

typedef void (*fnb_rows_fn)(const fnb_job *job, int64_t r0, int64_t r1);

/* fnb_pool.c, for fnb_layer.c */
fnb_rows_fn fnb_variant(int isa);
int fnb_i4_permuted(int isa);
int fnb_run_parallel(fnb_rows_fn fn, const fnb_job *jobs, int njobs, int threads);
void fnb_widen(const void *x, int xdtype, int64_t ldx, int T, int64_t K, int permute, float *dst);
int fnb_group_shift(int wkind, int64_t group, int64_t K);
float *fnb_scratch(int slot, int64_t floats);
void fnb_quantize_q8(const float *x, int T, int64_t K, int wkind, int8_t *q, float *d,
                     int32_t *c);
int fnb_q8_supported(int wkind, int64_t K);
int fnb_bf16_dot(int isa, int wkind, int tile);
int fnb_amx_ready(void);  /* the AMX tile kernel runs here (fnb_pool.c) */
void fnb_to_bf16(const float *x, int64_t n, uint16_t *dst);
void fnb_pack_steps(const void *x, int64_t esize, int T, int64_t K, int64_t step, void *dst);
void fnb_pack_op(const float *x, int T, int64_t K, int nr, float *dst);
int64_t fnb_packed_elems(int T, int64_t K, int64_t step);
void fnb_fail(void);
void fnb_lock(void);
void fnb_unlock(void);

/* scalar helpers shared by every variant */
static inline float fnb_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v; v.u = (uint32_t)h << 16; return v.f;
}
static inline float fnb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    union { uint32_t u; float f; } v;
    if (exp == 0) {  /* zero or subnormal: man * 2^-24 */
        float f = (float)man * 5.9604644775390625e-8f;
        v.f = f; v.u |= sign; return v.f;
    }
    if (exp == 31) v.u = sign | 0x7F800000u | (man << 13);
    else v.u = sign | ((exp + 112) << 23) | (man << 13);
    return v.f;
}
static inline uint16_t fnb_f32_to_bf16(float f) {  /* round to nearest even, NaN stays NaN */
    union { uint32_t u; float f; } v; v.f = f;
    if ((v.u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((v.u >> 16) | 0x40);
    v.u += 0x7FFFu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}
static inline uint16_t fnb_f32_to_f16(float f) {  /* round to nearest even */
    union { uint32_t u; float f; } v; v.f = f;
    uint32_t sign = (v.u >> 16) & 0x8000u, a = v.u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);             /* NaN */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);             /* overflow -> inf */
    if (a < 0x38800000u) {                                              /* subnormal or zero */
        union { uint32_t u; float f; } m; m.u = a;
        float scaled = m.f * 16777216.0f;                                /* units of 2^-24 */
        uint32_t q = (uint32_t)scaled; float rem = scaled - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u;                                        /* rebias 127 -> 15 */
    r += 0xFFFu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}
static inline float fnb_load_dt(const void *p, int dt, int64_t i) {
    if (dt == FNB_DT_BF16) return fnb_bf16_to_f32(((const uint16_t *)p)[i]);
    if (dt == FNB_DT_F16) return fnb_f16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}
static inline void fnb_store_dt(void *p, int dt, int64_t i, float v) {
    if (dt == FNB_DT_BF16) ((uint16_t *)p)[i] = fnb_f32_to_bf16(v);
    else if (dt == FNB_DT_F16) ((uint16_t *)p)[i] = fnb_f32_to_f16(v);
    else ((float *)p)[i] = v;
}
/* the position of input kk (0..31) of a block in the permuted int4 order: even k, then odd k */
static inline int fnb_perm32(int kk) { return (kk & 1) * (FNB_BLOCK / 2) + kk / 2; }
/* the weight scale of row r's 32-block b for the integer kinds (I8ROW: 1, scaled after the sum) */
static inline float fnb_block_scale(const fnb_job *j, int64_t r, int64_t b) {
    if (j->wkind == FNB_I8ROW) return 1.0f;
    int64_t i = r * j->groups_per_row + (b >> j->group_shift);
    if (j->wkind == FNB_I8GRP) return fnb_f16_to_f32(((const uint16_t *)j->scale)[i]);
    return fnb_load_dt(j->scale, j->sdtype, i);
}
/* bytes of one row of data for a kind */
static inline int64_t fnb_row_bytes(int wkind, int64_t K) {
    switch (wkind) {
    case FNB_F32: return 4 * K;
    case FNB_BF16: case FNB_F16: return 2 * K;
    case FNB_I4GRP: return K / 2;
    default: return K;
    }
}
#endif
