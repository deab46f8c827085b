/* One SIMD variant of the row kernels, compiled once per ISA with its own flags and name:
 *   -DFNB_VARIANT=avx2   -mavx2 -mfma -mf16c         (8 fp32 lanes)
 *   -DFNB_VARIANT=avx512 -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c  (16 lanes)
 *   -DFNB_VARIANT=avx512vnni  the avx512 flags + -mavx512vnni -mavx512bf16 (-DFNB_USE_VNNI:
 *                          vpdpbusd for the quantized-activation kernels; -DFNB_USE_BF16DOT:
 *                          vdpbf16ps for bf16 weights x bf16 activations; the rest as avx512)
 *   -DFNB_VARIANT=generic (no flags: GCC vector extensions, auto-vectorised for the target)
 * The pool (fnb_pool.c) picks a variant at run time from the CPU's features.
 *
 * Tiles: T <= 2 tokens run 4 rows at a time (4 x T accumulators, the weights read once for all
 * rows' FMA chains); more tokens run one row against up to 8 tokens (each weight vector widened
 * once, used 8 times; then tiles of 4, 2, 1). Weights are widened per 32-input block; group
 * kinds multiply the block by its scale before the FMAs (constant within a block: G % 32 == 0).
 *
 * Many tokens (job->tile): the tile kernels further down widen each weight once per call --
 * fp32 outer products, or bf16 panels for vdpbf16ps or (AMX-BF16 CPUs) for AMX tiles.
 *
 * Quantized activations (job->xq set): per row and 32-block, the weights as 32 signed bytes
 * (int4: the 16 low nibbles then the 16 high ones, minus 8), |w| times sign(w) * xq summed
 * exactly in int32 lanes (maddubs + madd, or one vpdpbusd), converted once per block and
 * scaled by (weight scale * activation scale) into fp32 accumulators. Same tiles as above.
 */
#include <string.h>
#include "fnb_kernels.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, CAT(_, FNB_VARIANT))

#if defined(FNB_USE_AVX512) || defined(FNB_USE_AVX2)
#include <immintrin.h>
#define SCALE_F16(h) _cvtsh_ss(h)  /* F16C */
#else
#define SCALE_F16(h) fnb_f16_to_f32(h)
#endif

#if defined(FNB_USE_AVX512)
#define VL 16
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VSET1(a) _mm512_set1_ps(a)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VHSUM(a) _mm512_reduce_add_ps(a)
static inline vf ld_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vf ld_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline vf ld_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
/* 32 nibbles (16 bytes) -> 2 vectors of u: [even k of the block], [odd k]; the activations
 * come permuted the same way (fnb_i4_permuted) */
static inline void ld_u4(const uint8_t *p, vf *w) {
    __m128i b = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(0x0F);
    w[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, m)));
    w[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), m)));
}
#define FNB_HAVE_U4_SCALED
/* The same two vectors already dequantized, (u - 8) s, by table lookup: the 16 values (u - 8) s
 * in one vector (one multiply, exact: a 4-bit integer times a scale), each byte widened to a
 * 32-bit lane and vpermps picking by the lane's low 4 bits (the low nibble; the high one after
 * a shift). 5 vector operations per 32 weights where widening + converting + scaling takes 9. */
static inline void ld_u4_scaled(const uint8_t *p, float s, vf *w) {
    const __m512 iota = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 tab = _mm512_mul_ps(iota, _mm512_set1_ps(s));
    __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    w[0] = _mm512_permutexvar_ps(d, tab);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), tab);
}
#elif defined(FNB_USE_AVX2)
#define VL 8
typedef __m256 vf;
#define VZERO() _mm256_setzero_ps()
#define VSET1(a) _mm256_set1_ps(a)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm256_mul_ps(a, b)
static inline float VHSUM(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vf ld_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline vf ld_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline vf ld_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
/* 32 nibbles (16 bytes, low nibble = even k) -> 4 vectors in natural k order: each 32-bit
 * word (8 nibbles) broadcast to the 8 lanes, lane i shifted right by 4 i (one variable shift) */
static inline void ld_u4(const uint8_t *p, vf *w) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i m = _mm256_set1_epi32(0x0F);
    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) {  /* vbroadcastss: just a load */
        __m256i word = _mm256_castps_si256(_mm256_broadcast_ss((const float *)(p + 4 * v)));
        w[v] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(word, shifts), m));
    }
}
#else  /* generic: GCC / clang vector extensions, 8 lanes */
#define VL 8
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));
static inline vf VZERO(void) { vf z = {0}; return z; }
static inline vf VSET1(float a) { vf v = {a, a, a, a, a, a, a, a}; return v; }
static inline vf VLOAD(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
static inline float VHSUM(vf a) {
    float s = 0; for (int i = 0; i < VL; i++) s += a[i]; return s;
}
static inline vf ld_bf16(const uint16_t *p) {
    vu u; for (int i = 0; i < VL; i++) u[i] = (uint32_t)p[i] << 16;
    return (vf)u;
}
static inline vf ld_f16(const uint16_t *p) {
    vf v; for (int i = 0; i < VL; i++) v[i] = fnb_f16_to_f32(p[i]); return v;
}
static inline vf ld_i8(const int8_t *p) {
    vi v; for (int i = 0; i < VL; i++) v[i] = p[i];
    return __builtin_convertvector(v, vf);
}
static inline void ld_u4(const uint8_t *p, vf *w) {  /* natural k order */
    for (int v = 0; v < 4; v++) {
        vi a;
        for (int i = 0; i < VL; i++) {
            int k = 8 * v + i;
            a[i] = (p[k / 2] >> (4 * (k & 1))) & 0x0F;
        }
        w[v] = __builtin_convertvector(a, vf);
    }
}
#endif

#define NB (FNB_BLOCK / VL)  /* vectors per 32-input block */
/* fully unrolled small loops, so the accumulator arrays live in registers */
#define UNROLL _Pragma("GCC unroll 16")

/* The fp32 scale of row r's block b (group kinds; 1 for the others). */
static inline __attribute__((always_inline)) float block_scale(const fnb_job *j, int kind,
                                                               int64_t r, int64_t b) {
    /* scale index: blocks per group is a power of two (checked by fnb_linear) */
    const int64_t sidx = r * j->groups_per_row + (b >> j->group_shift);
    if (kind == FNB_I8GRP) return SCALE_F16(((const uint16_t *)j->scale)[sidx]);
    if (kind != FNB_I4GRP) return 1.0f;
    return j->sdtype == FNB_DT_BF16 ? fnb_bf16_to_f32(((const uint16_t *)j->scale)[sidx])
         : j->sdtype == FNB_DT_F16 ? SCALE_F16(((const uint16_t *)j->scale)[sidx])
         : ((const float *)j->scale)[sidx];
}

/* The block scales of rows r .. r + R - 1 as fp32, [R][blocks] in per-thread scratch (group
 * kinds; NULL for the others, or when out of memory: fnb_fail()): the per-block dtype switch
 * and conversion leave the tiles' inner loop, which reads them by embedded broadcast */
#define FNB_SCALE_SLOT 16
static inline __attribute__((always_inline)) const float *stage_scales(const fnb_job *j,
                                                                       int kind, int64_t r,
                                                                       int R) {
    if (kind != FNB_I4GRP) return NULL;
    const int64_t nblk = j->K / FNB_BLOCK;
    float *out = fnb_scratch(FNB_SCALE_SLOT, R * nblk);
    if (!out) { fnb_fail(); return NULL; }
    const int dt = kind == FNB_I8GRP ? FNB_DT_F16 : j->sdtype;
    for (int i = 0; i < R; i++) {
        float *o = out + i * nblk;
        const int64_t s0 = (r + i) * j->groups_per_row;
        const uint16_t *h = (const uint16_t *)j->scale + s0;
        if (j->group_shift) for (int64_t b = 0; b < nblk; b++) o[b] = block_scale(j, kind, r + i, b);
        else if (dt == FNB_DT_F16) for (int64_t b = 0; b < nblk; b++) o[b] = SCALE_F16(h[b]);
        else if (dt == FNB_DT_BF16) for (int64_t b = 0; b < nblk; b++) o[b] = fnb_bf16_to_f32(h[b]);
        else for (int64_t b = 0; b < nblk; b++) o[b] = ((const float *)j->scale)[s0 + b];
    }
    return out;
}

/* Bytes of one 32-input block's weights per kind, and a software prefetch of row r's block b
 * once per 64-byte line: the row tiles ask for the next tile's rows while they compute (the
 * hardware prefetcher alone left the int4 kernel ~35% slower streaming than in cache) */
static inline int block_bytes(int kind) {
    return kind == FNB_F32 ? 128 : kind == FNB_BF16 || kind == FNB_F16 ? 64
         : kind == FNB_I4GRP ? 16 : 32;
}
static inline __attribute__((always_inline)) void prefetch_block(const fnb_job *j, int kind,
                                                                  int64_t r, int64_t b) {
    const int bb = block_bytes(kind);
    if (bb < 64 && (b & (64 / bb - 1))) return;  /* the line was asked for with an earlier block */
    const char *p = (const char *)j->w + ((uint64_t)(r * j->K + b * FNB_BLOCK) * bb >> 5);
    for (int o = 0; o < bb; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* One block's NB weight vectors of row `r`, block `b`, group kinds times their scale s. */
static inline __attribute__((always_inline)) void load_block_s(const fnb_job *j, int kind,
                                                                int64_t r, int64_t b, float s,
                                                                vf *w) {
    const int64_t K = j->K, off = r * K + b * FNB_BLOCK;
    switch (kind) {
    case FNB_F32:
        UNROLL for (int v = 0; v < NB; v++) w[v] = VLOAD((const float *)j->w + off + v * VL);
        break;
    case FNB_BF16:
        UNROLL for (int v = 0; v < NB; v++) w[v] = ld_bf16((const uint16_t *)j->w + off + v * VL);
        break;
    case FNB_F16:
        UNROLL for (int v = 0; v < NB; v++) w[v] = ld_f16((const uint16_t *)j->w + off + v * VL);
        break;
    case FNB_I8ROW:
        UNROLL for (int v = 0; v < NB; v++) w[v] = ld_i8((const int8_t *)j->w + off + v * VL);
        break;
    case FNB_I8GRP: {
        vf vs = VSET1(s);
        UNROLL for (int v = 0; v < NB; v++)
            w[v] = VMUL(ld_i8((const int8_t *)j->w + off + v * VL), vs);
        break;
    }
    case FNB_I4GRP: {
#if defined(FNB_HAVE_U4_SCALED)
        ld_u4_scaled((const uint8_t *)j->w + (uint64_t)off / 2, s, w);
#else
        vf vs = VSET1(s), vz = VSET1(-8.0f * s);  /* (u - 8) s = u s - 8 s: exact in one FMA */
        ld_u4((const uint8_t *)j->w + (uint64_t)off / 2, w);
        UNROLL for (int v = 0; v < NB; v++) w[v] = VFMA(w[v], vs, vz);
#endif
        break;
    }
    }
}
static inline __attribute__((always_inline)) void load_block(const fnb_job *j, int kind,
                                                              int64_t r, int64_t b, vf *w) {
    load_block_s(j, kind, r, b, block_scale(j, kind, r, b), w);
}

/* The weights themselves (as dequantization gives them): the per-row int8 scale of row r, and
 * load_block times it for that kind (rs: row_scale; 1 for the other kinds, already scaled). */
static inline float row_scale(const fnb_job *j, int kind, int64_t r) {
    return kind == FNB_I8ROW ? fnb_load_dt(j->scale, j->sdtype, r) : 1.0f;
}
static inline __attribute__((always_inline)) void load_weights(const fnb_job *j, int kind,
                                                                int64_t r, int64_t b, float rs,
                                                                vf *w) {
    load_block(j, kind, r, b, w);
    if (kind == FNB_I8ROW) UNROLL for (int v = 0; v < NB; v++) w[v] = VMUL(w[v], VSET1(rs));
}

/* The inputs past the last full block (float and per-row int8 kinds only). */
static inline float tail_dot(const fnb_job *j, int kind, int64_t r, const float *x) {
    const int64_t K = j->K, k0 = K / FNB_BLOCK * FNB_BLOCK;
    float s = 0;
    for (int64_t k = k0; k < K; k++) {
        float w;
        switch (kind) {
        case FNB_F32: w = ((const float *)j->w)[r * K + k]; break;
        case FNB_BF16: w = fnb_bf16_to_f32(((const uint16_t *)j->w)[r * K + k]); break;
        case FNB_F16: w = fnb_f16_to_f32(((const uint16_t *)j->w)[r * K + k]); break;
        default: w = (float)((const int8_t *)j->w)[r * K + k]; break;
        }
        s += w * x[k];
    }
    return s;
}

static inline void put(const fnb_job *j, int kind, int t, int64_t r, float v) {
    if (kind == FNB_I8ROW) v *= fnb_load_dt(j->scale, j->sdtype, r);
    fnb_store_dt(j->y, j->ydtype, (int64_t)t * j->ldy + r, v);
}

/* R rows x TT tokens from token t0. */
#define DEFINE_TILE(R, TT)                                                                    \
static inline __attribute__((always_inline)) void tile_##R##x##TT(                           \
        const fnb_job *j, int kind, int64_t r, int t0) {                                     \
    const int64_t K = j->K, nblk = K / FNB_BLOCK;                                             \
    const float *x = j->x + (int64_t)t0 * K;                                                  \
    const float *sc = stage_scales(j, kind, r, R);                                            \
    if (kind == FNB_I4GRP && !sc) return;  /* out of memory */         \
    vf acc[R][TT];                                                                            \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++) acc[i][t] = VZERO(); \
    const int64_t pf_rows = r + 2 * R <= j->N ? R : 0;                                     \
    for (int64_t b = 0; b < nblk; b++) {                                                      \
        UNROLL for (int i = 0; i < pf_rows; i++) prefetch_block(j, kind, r + R + i, b);       \
        UNROLL for (int i = 0; i < R; i++) {                                                  \
            vf w[NB];                                                                         \
            load_block_s(j, kind, r + i, b, sc ? sc[i * nblk + b] : block_scale(j, kind, r + i, b), w); \
            UNROLL for (int t = 0; t < TT; t++)                                               \
                UNROLL for (int v = 0; v < NB; v++)                                           \
                    acc[i][t] = VFMA(w[v], VLOAD(x + t * K + b * FNB_BLOCK + v * VL),         \
                                     acc[i][t]);                                              \
        }                                                                                     \
    }                                                                                         \
    UNROLL for (int i = 0; i < R; i++)                                                        \
        UNROLL for (int t = 0; t < TT; t++)                                                   \
            put(j, kind, t0 + t, r + i, VHSUM(acc[i][t]) + tail_dot(j, kind, r + i, x + t * K)); \
}
DEFINE_TILE(4, 1)
DEFINE_TILE(4, 2)
DEFINE_TILE(1, 1)
DEFINE_TILE(1, 2)
DEFINE_TILE(1, 4)
DEFINE_TILE(1, 8)

static inline __attribute__((always_inline)) void rows_kind(const fnb_job *j, int kind,
                                                             int64_t r0, int64_t r1) {
    int64_t r = r0;
    if (j->T <= 2) {
        for (; r + 4 <= r1; r += 4) {
            if (j->T == 1) tile_4x1(j, kind, r, 0); else tile_4x2(j, kind, r, 0);
        }
    }
    for (; r < r1; r++) {
        int t0 = 0;  /* 8 tokens at a time, then 4, 2, 1 for the rest */
        for (; t0 + 8 <= j->T; t0 += 8) tile_1x8(j, kind, r, t0);
        if (t0 + 4 <= j->T) { tile_1x4(j, kind, r, t0); t0 += 4; }
        if (t0 + 2 <= j->T) { tile_1x2(j, kind, r, t0); t0 += 2; }
        if (t0 < j->T) tile_1x1(j, kind, r, t0);
    }
}


/* ---- quantized activations ---------------------------------------------------------------- */
/* Scale modes, fixed per job so the inner loops do not branch on them: one (per-row int8,
 * scaled after the sum), fp16 / bf16 / fp32 with one scale per block, or any (groups > 32) */
enum { SM_ONE, SM_F16, SM_BF16, SM_F32, SM_ANY };
static inline int scale_mode(const fnb_job *j) {
    if (j->wkind == FNB_I8ROW) return SM_ONE;
    if (j->group_shift) return SM_ANY;
    if (j->wkind == FNB_I8GRP || j->sdtype == FNB_DT_F16) return SM_F16;
    return j->sdtype == FNB_DT_BF16 ? SM_BF16 : SM_F32;
}
#if defined(FNB_USE_AVX512) || defined(FNB_USE_AVX2)
/* the 32 weights of row r's block b as signed bytes (int4: [16 even k][16 odd k]) */
static inline __attribute__((always_inline)) __m256i q_weights(const fnb_job *j, int kind,
                                                                int64_t r, int64_t b) {
    if (kind == FNB_I4GRP) {
        __m128i v = _mm_loadu_si128((const __m128i *)((const uint8_t *)j->w +
                                                      (uint64_t)(r * j->K + b * FNB_BLOCK) / 2));
        __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v),
                                     _mm256_set1_epi8(0x0F));
        return _mm256_sub_epi8(u, _mm256_set1_epi8(8));
    }
    return _mm256_loadu_si256((const __m256i *)((const int8_t *)j->w + r * j->K +
                                                b * FNB_BLOCK));
}
/* 8 int32 lanes summing |w| * (sign(w) q): each the exact sum of 4 of the 32 products
 * (maddubs' int16 pairs cannot saturate: |w| <= 128, |q| <= 127) */
static inline __attribute__((always_inline)) __m256i q_dot(__m256i aw, __m256i w, __m256i q) {
    __m256i sq = _mm256_sign_epi8(q, w);
#if defined(FNB_USE_VNNI)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sq);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sq), _mm256_set1_epi16(1));
#endif
}
static inline float hsum256(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline __attribute__((always_inline)) float q_scale(const fnb_job *j, int kind, int64_t r,
                                                            int64_t b) {
    if (kind == FNB_I8ROW) return 1.0f;
    const int64_t i = r * j->groups_per_row + (b >> j->group_shift);
    if (kind == FNB_I8GRP) return SCALE_F16(((const uint16_t *)j->scale)[i]);
    return j->sdtype == FNB_DT_BF16 ? fnb_bf16_to_f32(((const uint16_t *)j->scale)[i])
         : j->sdtype == FNB_DT_F16 ? SCALE_F16(((const uint16_t *)j->scale)[i])
         : ((const float *)j->scale)[i];
}
/* the same for a fixed mode; srow: the row's first scale */
static inline __attribute__((always_inline)) float q_scale_sm(const fnb_job *j, int kind, int sm,
                                                               const void *srow, int64_t r,
                                                               int64_t b) {
    switch (sm) {
    case SM_ONE: return 1.0f;
    case SM_F16: return SCALE_F16(((const uint16_t *)srow)[b]);
    case SM_BF16: return fnb_bf16_to_f32(((const uint16_t *)srow)[b]);
    case SM_F32: return ((const float *)srow)[b];
    default: return q_scale(j, kind, r, b);
    }
}
static inline const void *scale_row(const fnb_job *j, int sm, int64_t r) {
    const int64_t i = r * j->groups_per_row;
    if (sm == SM_ONE || sm == SM_ANY) return j->scale;
    return sm == SM_F32 ? (const void *)((const float *)j->scale + i)
                        : (const void *)((const uint16_t *)j->scale + i);
}
#if defined(FNB_USE_VNNI)
/* Two blocks per 512-bit vector: the 64 weights of blocks b, b + 1 as unsigned bytes w + offset
 * (int8: w ^ 0x80; int4: the nibbles as stored, [16 even k][16 odd k] per block), so one
 * vpdpbusd multiplies them by the signed activations and adds the correction vector (xc: lane
 * 0 of each block's 8 lanes -offset * sum(q)): each block's 8 lanes then sum to sum_k w_k q_k. */
static inline __attribute__((always_inline)) __m512i q_weights2(const fnb_job *j, int kind,
                                                                 int64_t r, int64_t b) {
    if (kind == FNB_I4GRP) {
        __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(
            (const uint8_t *)j->w + (uint64_t)(r * j->K + b * FNB_BLOCK) / 2)));
        v = _mm512_shuffle_i64x2(v, v, 0x50);  /* 128-bit lanes [0, 0, 1, 1] */
        v = _mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));  /* odd k: high */
        return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
    }
    return _mm512_xor_si512(_mm512_loadu_si512((const void *)((const int8_t *)j->w +
                                                               r * j->K + b * FNB_BLOCK)),
                            _mm512_set1_epi8((char)0x80));
}
/* the weight scales of blocks b, b + 1 in lanes 0, 1 */
static inline __attribute__((always_inline)) __m128 q_scales2(const fnb_job *j, int kind, int sm,
                                                               const void *srow, int64_t r,
                                                               int64_t b) {
    int32_t two;  /* two consecutive 16-bit scales */
    switch (sm) {
    case SM_ONE: return _mm_set1_ps(1.0f);
    case SM_F16:
        memcpy(&two, (const uint16_t *)srow + b, sizeof two);
        return _mm_cvtph_ps(_mm_cvtsi32_si128(two));
    case SM_BF16:
        memcpy(&two, (const uint16_t *)srow + b, sizeof two);
        return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_cvtsi32_si128(two)), 16));
    case SM_F32:
        return _mm_castpd_ps(_mm_load_sd((const double *)((const float *)srow + b)));
    default:
        return _mm_setr_ps(q_scale(j, kind, r, b), q_scale(j, kind, r, b + 1), 0.0f, 0.0f);
    }
}
#define DEFINE_QTILE(R, TT)                                                                   \
static inline __attribute__((always_inline)) void qtile_##R##x##TT(                          \
        const fnb_job *j, int kind, int sm, int64_t r, int t0) {                             \
    const int64_t K = j->K, nblk = K / FNB_BLOCK;                                             \
    const void *srow[R];                                                                      \
    UNROLL for (int i = 0; i < R; i++) srow[i] = scale_row(j, sm, r + i);                     \
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1); \
    __m512 acc[R][TT];                                                                        \
    float tail[R][TT];                                                                        \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++) {                  \
        acc[i][t] = _mm512_setzero_ps(); tail[i][t] = 0.0f; }                                 \
    int64_t b = 0;                                                                            \
    const int64_t pf_rows = r + 2 * R <= j->N ? R : 0;                                      \
    for (; b + 2 <= nblk; b += 2) {  /* the activations loaded once for all R rows */         \
        UNROLL for (int i = 0; i < pf_rows; i++) {                                            \
            prefetch_block(j, kind, r + R + i, b);                                            \
            prefetch_block(j, kind, r + R + i, b + 1);                                        \
        }                                                                                     \
        __m512i q[TT], c[TT];                                                                 \
        __m128 xs2[TT];                                                                       \
        UNROLL for (int t = 0; t < TT; t++) {                                                 \
            const int64_t tk = (int64_t)(t0 + t) * K;                                         \
            q[t] = _mm512_loadu_si512((const void *)(j->xq + tk + b * FNB_BLOCK));           \
            c[t] = _mm512_loadu_si512((const void *)(j->xc + tk / 4 + b * 8));               \
            xs2[t] = _mm_castpd_ps(_mm_load_sd(                                               \
                (const double *)(j->xs + (int64_t)(t0 + t) * nblk + b)));                    \
        }                                                                                     \
        UNROLL for (int i = 0; i < R; i++) {                                                  \
            __m512i w = q_weights2(j, kind, r + i, b);                                        \
            __m128 ws = q_scales2(j, kind, sm, srow[i], r + i, b);                            \
            UNROLL for (int t = 0; t < TT; t++) {                                             \
                __m512i dot = _mm512_dpbusd_epi32(c[t], w, q[t]);                             \
                __m512 d = _mm512_permutexvar_ps(spread,                                      \
                                                 _mm512_castps128_ps512(_mm_mul_ps(ws, xs2[t]))); \
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), d, acc[i][t]);           \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    if (b < nblk) {  /* an odd last block: one 256-bit step */                                \
        UNROLL for (int i = 0; i < R; i++) {                                                  \
            __m256i w = q_weights(j, kind, r + i, b), aw = _mm256_sign_epi8(w, w);            \
            float ws = q_scale_sm(j, kind, sm, srow[i], r + i, b);                            \
            UNROLL for (int t = 0; t < TT; t++) {                                             \
                const int64_t tk = (int64_t)(t0 + t) * K;                                     \
                __m256i qb = _mm256_loadu_si256((const __m256i *)(j->xq + tk + b * FNB_BLOCK)); \
                tail[i][t] = hsum256(_mm256_cvtepi32_ps(q_dot(aw, w, qb))) *                  \
                             (ws * j->xs[(int64_t)(t0 + t) * nblk + b]);                      \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++)                    \
        put(j, kind, t0 + t, r + i, _mm512_reduce_add_ps(acc[i][t]) + tail[i][t]);            \
}
/* Rows per tile for one or two tokens when a token's quantized activations and corrections
 * (2 K bytes) outgrow a third of a 32-48 KiB L1: each activation load then serves 4 rows (2 for
 * two tokens). Smaller K keeps one row per tile (measured faster: one weight stream). */
#define FNB_QROWS 4
#define FNB_QROWS_MIN_K 8192
#else
#define DEFINE_QTILE(R, TT)                                                                   \
static inline __attribute__((always_inline)) void qtile_##R##x##TT(                          \
        const fnb_job *j, int kind, int sm, int64_t r, int t0) {                             \
    const int64_t K = j->K, nblk = K / FNB_BLOCK;                                             \
    const void *srow = scale_row(j, sm, r);                                                   \
    const int8_t *xq = j->xq + (int64_t)t0 * K;                                               \
    const float *xs = j->xs + (int64_t)t0 * nblk;                                             \
    __m256 acc[R][TT];                                                                        \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++)                    \
        acc[i][t] = _mm256_setzero_ps();                                                      \
    const int64_t pf_rows = r + 2 * R <= j->N ? R : 0;                                      \
    for (int64_t b = 0; b < nblk; b++) {                                                      \
        UNROLL for (int i = 0; i < pf_rows; i++) prefetch_block(j, kind, r + R + i, b);       \
        UNROLL for (int i = 0; i < R; i++) {                                                  \
            __m256i w = q_weights(j, kind, r + i, b), aw = _mm256_sign_epi8(w, w);            \
            float ws = q_scale_sm(j, kind, sm, srow, r + i, b);                               \
            UNROLL for (int t = 0; t < TT; t++) {                                             \
                __m256i q = _mm256_loadu_si256((const __m256i *)(xq + t * K + b * FNB_BLOCK)); \
                __m256 d = _mm256_set1_ps(ws * xs[t * nblk + b]);                             \
                acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q_dot(aw, w, q)), d,           \
                                            acc[i][t]);                                       \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    UNROLL for (int i = 0; i < R; i++)                                                        \
        UNROLL for (int t = 0; t < TT; t++) put(j, kind, t0 + t, r + i, hsum256(acc[i][t]));  \
}
#endif
#else  /* generic: plain C, int32 per block */
static inline int q_weight(const fnb_job *j, int kind, int64_t r, int64_t b, int kk) {
    if (kind == FNB_I4GRP) {  /* kk in the permuted order: 0..15 even k, 16..31 odd k */
        uint8_t byte = ((const uint8_t *)j->w)[(r * j->K + b * FNB_BLOCK) / 2 + (kk & 15)];
        return (kk < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
    }
    return ((const int8_t *)j->w)[r * j->K + b * FNB_BLOCK + kk];
}
#define DEFINE_QTILE(R, TT)                                                                   \
static inline void qtile_##R##x##TT(const fnb_job *j, int kind, int sm, int64_t r, int t0) {  \
    const int64_t K = j->K, nblk = K / FNB_BLOCK;                                             \
    for (int i = 0; i < R; i++)                                                               \
        for (int t = 0; t < TT; t++) {                                                        \
            const int8_t *xq = j->xq + (int64_t)(t0 + t) * K;                                 \
            const float *xs = j->xs + (int64_t)(t0 + t) * nblk;                               \
            float acc = 0;                                                                    \
            for (int64_t b = 0; b < nblk; b++) {                                              \
                int32_t dot = 0;                                                              \
                for (int kk = 0; kk < FNB_BLOCK; kk++)                                        \
                    dot += q_weight(j, kind, r + i, b, kk) * xq[b * FNB_BLOCK + kk];          \
                acc += (float)dot * (fnb_block_scale(j, r + i, b) * xs[b]);                   \
            }                                                                                 \
            put(j, kind, t0 + t, r + i, acc);                                                 \
        }                                                                                     \
}
#endif
DEFINE_QTILE(1, 1)
DEFINE_QTILE(1, 2)
DEFINE_QTILE(1, 4)
DEFINE_QTILE(1, 8)
#if defined(FNB_QROWS)
DEFINE_QTILE(4, 1)
DEFINE_QTILE(2, 2)
#endif

/* One row at a time against up to 8 tokens (one sequential weight stream per thread: measured
 * faster than 4-row tiles here, whose integer work per block leaves the loads waiting). */
static inline __attribute__((always_inline)) void qrows_sm(const fnb_job *j, int kind, int sm,
                                                            int64_t r0, int64_t r1) {
    int64_t r = r0;
#if defined(FNB_QROWS)
    if (j->K >= FNB_QROWS_MIN_K) {
        if (j->T == 1) for (; r + 4 <= r1; r += 4) qtile_4x1(j, kind, sm, r, 0);
        if (j->T == 2) for (; r + 2 <= r1; r += 2) qtile_2x2(j, kind, sm, r, 0);
    }
#endif
    for (; r < r1; r++) {
        int t0 = 0;
        for (; t0 + 8 <= j->T; t0 += 8) qtile_1x8(j, kind, sm, r, t0);
        if (t0 + 4 <= j->T) { qtile_1x4(j, kind, sm, r, t0); t0 += 4; }
        if (t0 + 2 <= j->T) { qtile_1x2(j, kind, sm, r, t0); t0 += 2; }
        if (t0 < j->T) qtile_1x1(j, kind, sm, r, t0);
    }
}
/* one copy per scale mode the kind can have */
static inline __attribute__((always_inline)) void qrows_kind(const fnb_job *j, int kind,
                                                              int64_t r0, int64_t r1) {
    switch (scale_mode(j)) {
    case SM_ONE: if (kind == FNB_I8ROW) qrows_sm(j, kind, SM_ONE, r0, r1); break;
    case SM_F16: if (kind != FNB_I8ROW) qrows_sm(j, kind, SM_F16, r0, r1); break;
    case SM_BF16: if (kind == FNB_I4GRP) qrows_sm(j, kind, SM_BF16, r0, r1); break;
    case SM_F32: if (kind == FNB_I4GRP) qrows_sm(j, kind, SM_F32, r0, r1); break;
    default: if (kind != FNB_I8ROW) qrows_sm(j, kind, SM_ANY, r0, r1); break;
    }
}

/* ---- bf16 weights x bf16 activations: vdpbf16ps (AVX512-BF16) ------------------------------ */
#if defined(FNB_USE_BF16DOT)
/* Products of two bf16 numbers are exact in fp32, so this is the weight-only kernel's math
 * (x_k w_k summed in fp32, another order; the instruction treats denormals as zero) without
 * widening either operand: 32 weights per instruction. */
#define DEFINE_HTILE(R, TT)                                                                   \
static inline __attribute__((always_inline)) void htile_##R##x##TT(                          \
        const fnb_job *j, int64_t r, int t0) {                                               \
    const int64_t K = j->K, nblk = K / FNB_BLOCK;                                             \
    __m512 acc[R][TT];                                                                        \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++)                    \
        acc[i][t] = _mm512_setzero_ps();                                                      \
    for (int64_t b = 0; b < nblk; b++) {                                                      \
        __m512bh x[TT];                                                                       \
        UNROLL for (int t = 0; t < TT; t++)                                                   \
            x[t] = (__m512bh)_mm512_loadu_si512((const void *)(j->xh + (int64_t)(t0 + t) * K + \
                                                               b * FNB_BLOCK));              \
        UNROLL for (int i = 0; i < R; i++) {                                                  \
            __m512bh w = (__m512bh)_mm512_loadu_si512((const void *)(                          \
                (const uint16_t *)j->w + (r + i) * K + b * FNB_BLOCK));                       \
            UNROLL for (int t = 0; t < TT; t++) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], w, x[t]); \
        }                                                                                     \
    }                                                                                         \
    UNROLL for (int i = 0; i < R; i++)                                                        \
        UNROLL for (int t = 0; t < TT; t++) {                                                 \
            float tail = 0;                                                                   \
            for (int64_t k = nblk * FNB_BLOCK; k < K; k++)                                    \
                tail += fnb_bf16_to_f32(((const uint16_t *)j->w)[(r + i) * K + k]) *           \
                        fnb_bf16_to_f32(j->xh[(int64_t)(t0 + t) * K + k]);                    \
            put(j, FNB_BF16, t0 + t, r + i, _mm512_reduce_add_ps(acc[i][t]) + tail);          \
        }                                                                                     \
}
DEFINE_HTILE(4, 1)
DEFINE_HTILE(4, 2)
DEFINE_HTILE(1, 1)
DEFINE_HTILE(1, 2)
DEFINE_HTILE(1, 4)
DEFINE_HTILE(1, 8)

static void hrows(const fnb_job *j, int64_t r0, int64_t r1) {
    int64_t r = r0;
    if (j->T <= 2)
        for (; r + 4 <= r1; r += 4) {
            if (j->T == 1) htile_4x1(j, r, 0); else htile_4x2(j, r, 0);
        }
    for (; r < r1; r++) {
        int t0 = 0;
        for (; t0 + 8 <= j->T; t0 += 8) htile_1x8(j, r, t0);
        if (t0 + 4 <= j->T) { htile_1x4(j, r, t0); t0 += 4; }
        if (t0 + 2 <= j->T) { htile_1x2(j, r, t0); t0 += 2; }
        if (t0 < j->T) htile_1x1(j, r, t0);
    }
}
#endif

/* Dequantize rows r0..r1 into y [N, K] (ydtype): the same weight vectors the products use
 * (load_block: q * scale in fp32), rounded once to ydtype (round to nearest even; the scales
 * are finite, so no NaN handling), exactly what formats/quant.py's dequantization gives. */
#if defined(FNB_USE_AVX512)
static inline void store_vec(const fnb_job *j, int64_t at, vf v) {
    if (j->ydtype == FNB_DT_F32) { _mm512_storeu_ps((float *)j->y + at, v); return; }
    __m256i h;
    if (j->ydtype == FNB_DT_F16) {
        h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
        __m512i u = _mm512_castps_si512(v);
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
        h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
    }
    _mm256_storeu_si256((__m256i *)((uint16_t *)j->y + at), h);
}
#elif defined(FNB_USE_AVX2)
static inline void store_vec(const fnb_job *j, int64_t at, vf v) {
    if (j->ydtype == FNB_DT_F32) { _mm256_storeu_ps((float *)j->y + at, v); return; }
    __m128i h;
    if (j->ydtype == FNB_DT_F16) {
        h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
        __m256i u = _mm256_castps_si256(v);
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd,
                                                                   _mm256_set1_epi32(0x7FFF))), 16);
        h = _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
    }
    _mm_storeu_si128((__m128i *)((uint16_t *)j->y + at), h);
}
#else
static inline void store_vec(const fnb_job *j, int64_t at, vf v) {
    for (int i = 0; i < VL; i++) fnb_store_dt(j->y, j->ydtype, at + i, v[i]);
}
#endif

#if defined(FNB_USE_AVX512)
/* an int4 block's two vectors [16 even k][16 odd k] (ld_u4) -> the 32 k in order */
static inline __attribute__((always_inline)) void unpermute_i4(vf *w) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
                                         15, 31);
    vf even = w[0], odd = w[1];
    w[0] = _mm512_permutex2var_ps(even, lo, odd);
    w[1] = _mm512_permutex2var_ps(even, hi, odd);
}
#endif

static inline __attribute__((always_inline)) void dequant_kind(const fnb_job *j, int kind,
                                                                int64_t r0, int64_t r1) {
    const int64_t K = j->K, nblk = K / FNB_BLOCK;
    for (int64_t r = r0; r < r1; r++) {
        const float rs = row_scale(j, kind, r);
        for (int64_t b = 0; b < nblk; b++) {
            vf w[NB];
#if !defined(FNB_USE_AVX512) && !defined(FNB_USE_AVX2)
            if (kind == FNB_I4GRP) {  /* (u - 8) * s in one rounding (no fused multiply-add) */
                const uint8_t *p = (const uint8_t *)j->w + (r * K + b * FNB_BLOCK) / 2;
                const float s = fnb_block_scale(j, r, b);
                for (int i = 0; i < FNB_BLOCK; i++)
                    w[i / VL][i % VL] = (float)(((p[i / 2] >> (4 * (i & 1))) & 0x0F) - 8) * s;
            } else
#endif
            load_weights(j, kind, r, b, rs, w);
#if defined(FNB_USE_AVX512)
            if (kind == FNB_I4GRP) unpermute_i4(w);
#endif
            UNROLL for (int v = 0; v < NB; v++) store_vec(j, r * j->ldy + b * FNB_BLOCK + v * VL,
                                                          w[v]);
        }
        for (int64_t k = nblk * FNB_BLOCK; k < K; k++)  /* per-row int8's tail */
            fnb_store_dt(j->y, j->ydtype, r * j->ldy + k,
                         (float)((const int8_t *)j->w)[r * K + k] * rs);
    }
}

/* ---- many tokens: rows widened once per call, register tiles over the tokens --------------
 * (job->tile, the 'native-tile' / 'native-bf16tile' kernels.) Two kinds:
 * - fp32 (exact: the weight-only kernels' numbers; every ISA): outer products, below (op_kind);
 * - bf16 panels (AVX512-BF16, bf16 activations): the worker widens PANEL_BYTES of its rows at a
 *   time into a thread-local panel rounded to bf16 (round to nearest even: the weights a bf16
 *   reference holds, as the dequantizing kernels give them) and multiplies it by every token in
 *   tiles of 4 rows x 6 tokens with vdpbf16ps (dot products along k, vector partial sums between
 *   steps). Panel and activations are step-major (fnb_kernels.h, fnb_tile_step): one step's
 *   inputs of every row (token) lie together, so a step's rows stay in L1 while every token
 *   tile re-reads them (rows K apart would share a few L1 sets and evict each other). */
#define PANEL_BYTES (192 << 10)  /* L2-sized */
#define PT_R 4

#if defined(FNB_USE_AVX512)
static inline void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
#elif defined(FNB_USE_AVX2)
static inline void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
#else
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
#endif

#if defined(FNB_USE_BF16DOT)
/* rows r0..r1 of the job's weights -> bf16 panel, step-major ([K / step][r1 - r0][step]), k in
 * natural order */
static inline __attribute__((always_inline)) void fill_panel(const fnb_job *j, int kind,
                                                              int64_t r0, int64_t r1,
                                                              void *panel) {
    const int64_t K = j->K, nblk = K / FNB_BLOCK, step = fnb_tile_step(), P = r1 - r0;
    fnb_job dst = *j;  /* store_vec writes bf16 through a job's y / ydtype */
    dst.y = panel; dst.ydtype = FNB_DT_BF16;
    for (int64_t r = r0; r < r1; r++) {
        const float rs = row_scale(j, kind, r);
        for (int64_t b = 0; b < nblk; b++) {
            const int64_t k = b * FNB_BLOCK;
            const int64_t at = (k / step) * P * step + (r - r0) * step + k % step;
            vf w[NB];
            load_weights(j, kind, r, b, rs, w);
            if (kind == FNB_I4GRP) unpermute_i4(w);  /* bf16 x is in order */
            UNROLL for (int v = 0; v < NB; v++) store_vec(&dst, at + v * VL, w[v]);
        }
    }
}

/* Vector partial sums of the bf16 tiles: PART_LANES floats per row and token, row stride T */
#define PART_LANES 16
#define TILE_ARGS int64_t step, int64_t n, int64_t r, int t0, float *part, int first, int last

/* R bf16 panel rows x TT tokens over one step of n inputs, 32 products per vdpbf16ps: wp / x the
 * step's first row / token (row stride `step`). The accumulators start at zero (first) or from
 * `part` and end as outputs of rows r.. (last) or back in `part`. */
#define DEFINE_BTILE(R, TT)                                                                   \
static inline __attribute__((always_inline)) void btile_##R##x##TT(                          \
        const fnb_job *j, const uint16_t *wp, const uint16_t *x, TILE_ARGS) {                \
    const int64_t T = j->T;                                                                   \
    __m512 acc[R][TT];                                                                        \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++)                    \
        acc[i][t] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(part + (i * T + t) * PART_LANES); \
    for (int64_t k = 0; k < n; k += FNB_BLOCK) {                                              \
        __m512bh w[R];                                                                        \
        UNROLL for (int i = 0; i < R; i++)                                                    \
            w[i] = (__m512bh)_mm512_loadu_si512((const void *)(wp + i * step + k));           \
        UNROLL for (int t = 0; t < TT; t++) {                                                 \
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + t * step + k));     \
            UNROLL for (int i = 0; i < R; i++) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], w[i], xv); \
        }                                                                                     \
    }                                                                                         \
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int t = 0; t < TT; t++) {                  \
        if (last) fnb_store_dt(j->y, j->ydtype, (int64_t)(t0 + t) * j->ldy + r + i,           \
                               _mm512_reduce_add_ps(acc[i][t]));                              \
        else _mm512_storeu_ps(part + (i * T + t) * PART_LANES, acc[i][t]);                    \
    }                                                                                         \
}
DEFINE_BTILE(4, 6)
DEFINE_BTILE(1, 6)
DEFINE_BTILE(4, 2)
DEFINE_BTILE(4, 1)
DEFINE_BTILE(1, 2)
DEFINE_BTILE(1, 1)
#define TILE_CALL(R, TT, wp, xp, ...)                                                          \
    btile_##R##x##TT(j, (const uint16_t *)(wp), (const uint16_t *)(xp), __VA_ARGS__)

/* every token against bf16 panel rows p0..p1, one step of inputs at a time (the step's slice of
 * the panel stays in L1 while each token tile re-reads it) */
static inline __attribute__((always_inline)) void panel_tokens(const fnb_job *j,
                                                                const void *panel, float *part,
                                                                int64_t p0, int64_t p1) {
    const int64_t K = j->K, T = j->T, P = p1 - p0, esize = 2;
    const int64_t step = fnb_tile_step();
    const char *xs = (const char *)j->xh;
    for (int64_t k0 = 0; k0 < K; k0 += step) {
        const int64_t n = k0 + step < K ? step : K - k0;
        const int first = k0 == 0, last = k0 + n == K;
        const char *wstep = (const char *)panel + (k0 / step) * P * step * esize;
        const char *xstep = xs + (k0 / step) * T * step * esize;
#define ROWS_OF(TT) do {                                                                       \
        int64_t r = p0;                                                                       \
        for (; r + 4 <= p1; r += 4)                                                           \
            TILE_CALL(4, TT, wstep + (r - p0) * step * esize, xstep + t0 * step * esize,      \
                      step, n, r, t0, part + ((r - p0) * T + t0) * PART_LANES, first, last);  \
        for (; r < p1; r++)                                                                   \
            TILE_CALL(1, TT, wstep + (r - p0) * step * esize, xstep + t0 * step * esize,      \
                      step, n, r, t0, part + ((r - p0) * T + t0) * PART_LANES, first, last);  \
    } while (0)
        int t0 = 0;
        for (; t0 + 6 <= T; t0 += 6) ROWS_OF(6);
        for (; t0 + 2 <= T; t0 += 2) ROWS_OF(2);
        if (t0 < T) ROWS_OF(1);
#undef ROWS_OF
    }
}
#endif  /* FNB_USE_BF16DOT */

#if defined(FNB_USE_AVX512)
/* r[i] = row i of a 16 x 16 block -> r[c] = its column c (the AMX panel's pairs and the fp32
 * tiles' stores) */
static inline __attribute__((always_inline)) void transpose16(__m512 *r) {
    __m512 t[16];
    UNROLL for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    UNROLL for (int i = 0; i < 16; i += 4) {  /* r[i + q]: element 4 l + q of rows i..i+3 */
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    UNROLL for (int q = 0; q < 4; q++) {  /* 128-bit lanes: rows 0-7 and 8-15 */
        t[q] = _mm512_shuffle_f32x4(r[q], r[q + 4], 0x88);
        t[q + 4] = _mm512_shuffle_f32x4(r[q], r[q + 4], 0xdd);
        t[q + 8] = _mm512_shuffle_f32x4(r[q + 8], r[q + 12], 0x88);
        t[q + 12] = _mm512_shuffle_f32x4(r[q + 8], r[q + 12], 0xdd);
    }
    UNROLL for (int q = 0; q < 4; q++) {
        r[q] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88);
        r[q + 4] = _mm512_shuffle_f32x4(t[q + 4], t[q + 12], 0x88);
        r[q + 8] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0xdd);
        r[q + 12] = _mm512_shuffle_f32x4(t[q + 4], t[q + 12], 0xdd);
    }
}
#endif

/* ---- AMX: bf16 panels multiplied in tile registers (FNB_TILE_AMX) ---------------------------
 * The bf16 panel kernel's numbers (the weights rounded to bf16 as the dequantizing kernels round
 * them, bf16 activations, fp32 sums) with tdpbf16ps: one instruction multiplies 16 tokens x 32
 * inputs by 32 inputs x 16 rows into 16 x 16 fp32 sums. The panel is in AMX's B layout, per
 * 32-input block and 16-row group a 1 KiB tile [16 input pairs][16 rows][2]; the activations are
 * the bf16 tile kernels' step-major packing, read as A tiles (16 tokens, row stride one step).
 * Tiles: C 0-3 (2 token tiles x 2 row groups), A 4-5, B 6-7; a partial last token tile is a
 * tile configured with fewer rows. Built where the compiler knows AMX (function target, so the
 * rest of the variant keeps its flags); run where the CPU has it and Linux lets the process use
 * its tile state (fnb_amx_ready, fnb_pool.c). */
#if defined(FNB_USE_BF16DOT) && ((defined(__clang__) && __clang_major__ >= 12) || \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define FNB_HAVE_AMX
#define AMX_FN static __attribute__((target("amx-tile,amx-bf16"), noinline))
#define FNB_AMX_SLOT 17  /* fnb_scratch slot of the AMX panel */
#define AMX_ROWS 32          /* rows per pass: two 16-row groups */
#define AMX_PANEL_BYTES (512 << 10)  /* an L2 share of rows (the tiles re-read it per 32 tokens) */

typedef struct __attribute__((packed, aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* 32 fp32 weights in k order -> bf16, round to nearest even (vcvtne2ps2bf16: as store_vec
 * rounds, but with fp32 denormals flushed -- |w| < 1.2e-38, nothing a product here notices), as
 * 16 input pairs */
static inline __m512i bf16_pairs(const vf *w) {
    return (__m512i)_mm512_cvtne2ps_pbh(w[1], w[0]);
}

/* rows r0..r1 of the job's weights -> B tiles [K / 32][rows / 16][16 pairs][16 rows][2] bf16,
 * rows past r1 (up to `rows`, a multiple of AMX_ROWS) zero. One tile (1 KiB) at a time: its 16
 * rows' pairs in 16 vectors, transposed in registers, stored as the tile's 16 lines */
static inline __attribute__((always_inline)) void fill_amx_panel(const fnb_job *j, int kind,
                                                                  int64_t r0, int64_t r1,
                                                                  int64_t rows, uint32_t *panel) {
    const int64_t nblk = j->K / FNB_BLOCK, groups = rows / 16;
    for (int64_t g = 0; g < groups; g++) {
        const int64_t rg = r0 + g * 16, live = r1 - rg < 16 ? (r1 - rg > 0 ? r1 - rg : 0) : 16;
        float rs[16];
        for (int64_t i = 0; i < live; i++) rs[i] = row_scale(j, kind, rg + i);
        for (int64_t b = 0; b < nblk; b++) {
            __m512i v[16];
            UNROLL for (int i = 0; i < 16; i++) {
                if (i >= live) { v[i] = _mm512_setzero_si512(); continue; }
                vf w[NB];
                load_weights(j, kind, rg + i, b, rs[i], w);
                if (kind == FNB_I4GRP) unpermute_i4(w);  /* bf16 x is in order */
                v[i] = bf16_pairs(w);
            }
            __m512 f[16];  /* the pairs as 32-bit lanes: transposed as floats, bits kept */
            UNROLL for (int i = 0; i < 16; i++) f[i] = _mm512_castsi512_ps(v[i]);
            transpose16(f);
            float *tile = (float *)(panel + (b * groups + g) * 256);
            UNROLL for (int kp = 0; kp < 16; kp++) _mm512_store_ps(tile + kp * 16, f[kp]);
        }
    }
}

static void amx_configure(amx_config *c, int rows_a, int rows_b) {
    memset(c, 0, sizeof *c);
    c->palette = 1;
    for (int t = 0; t < 8; t++) c->colsb[t] = 64;
    c->rows[0] = c->rows[1] = c->rows[4] = (uint8_t)rows_a;  /* C and A of the first tokens */
    c->rows[2] = c->rows[3] = c->rows[5] = (uint8_t)(rows_b ? rows_b : rows_a);
    c->rows[6] = c->rows[7] = 16;  /* B: 16 input pairs */
}

/* C tile -> y for its tokens t0.. (n of them) and rows r.. below r1 */
static inline void amx_put(const fnb_job *j, const float *c, int t0, int n, int64_t r,
                           int64_t r1) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < 16 && r + i < r1; i++)
            fnb_store_dt(j->y, j->ydtype, (int64_t)(t0 + t) * j->ldy + r + i, c[t * 16 + i]);
}

/* tokens t0.. (na in the first tile, nb in the second, 0: none) x the panel's row groups g, g+1 */
AMX_FN void amx_tokens(const fnb_job *j, const uint32_t *panel, int64_t groups, int64_t g,
                       int64_t r, int64_t r1, int t0, int na, int nb) {
    const int64_t K = j->K, T = j->T, step = fnb_tile_step(), nblk = K / FNB_BLOCK;
    const uint16_t *xs = j->xh;
    amx_config cfg;
    amx_configure(&cfg, na, nb);
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t k = b * FNB_BLOCK;
        const uint16_t *a = xs + ((k / step) * T + t0) * step + k % step;
        const uint32_t *bt = panel + (b * groups + g) * 256;
        _tile_loadd(4, a, step * 2);
        _tile_loadd(6, bt, 64);
        _tile_loadd(7, bt + 256, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (nb) {
            _tile_loadd(5, a + 16 * step, step * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    float c[4][256];
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    if (nb) { _tile_stored(2, c[2], 64); _tile_stored(3, c[3], 64); }
    _tile_release();
    amx_put(j, c[0], t0, na, r, r1);
    amx_put(j, c[1], t0, na, r + 16, r1);
    if (nb) { amx_put(j, c[2], t0 + 16, nb, r, r1); amx_put(j, c[3], t0 + 16, nb, r + 16, r1); }
}

static inline __attribute__((always_inline)) void amx_kind(const fnb_job *j, int kind,
                                                           int64_t r0, int64_t r1) {
    const int64_t K = j->K, T = j->T;
    int64_t rows = AMX_PANEL_BYTES / (K * 2) / AMX_ROWS * AMX_ROWS;
    if (rows < AMX_ROWS) rows = AMX_ROWS;
    const int64_t align = 64 / sizeof(float);  /* tiles on 64-byte lines */
    uint32_t *panel = (uint32_t *)fnb_scratch(FNB_AMX_SLOT, K * rows / 2 + align);  /* bf16 */
    if (!panel) { fnb_fail(); return; }
    panel = (uint32_t *)(((uintptr_t)panel + 63) & ~(uintptr_t)63);
    for (int64_t p0 = r0; p0 < r1; p0 += rows) {
        const int64_t p1 = p0 + rows < r1 ? p0 + rows : r1;
        const int64_t prow = (p1 - p0 + AMX_ROWS - 1) / AMX_ROWS * AMX_ROWS, groups = prow / 16;
        fill_amx_panel(j, kind, p0, p1, prow, panel);
        for (int64_t g = 0; g < groups; g += 2)
            for (int t0 = 0; t0 < T; t0 += 32) {
                const int left = T - t0, na = left < 16 ? left : 16;
                const int nb = left <= 16 ? 0 : left - 16 < 16 ? left - 16 : 16;
                amx_tokens(j, panel, groups, g, p0 + g * 16, p1, t0, na, nb);
            }
    }
}
#endif  /* AMX */

int NAME(fnb_amx_built)(void) {
#if defined(FNB_HAVE_AMX)
    return 1;
#else
    return 0;
#endif
}

/* ---- fp32 tiles: outer products ------------------------------------------------------------
 * Per input k: OP_MR rows' weights (two vectors) times each of OP_NR tokens' x[k] broadcast,
 * into OP_MR x OP_NR accumulators that stay in registers for FNB_OP_KC inputs (then in a small
 * buffer c between chunks). The weights of a row block and chunk are widened into `slice`
 * [KC][OP_MR] (fp32, storage order: int4 blocks permuted on AVX-512 as the fp32 activations
 * are) once and re-read from L1 by every token tile; x comes packed (fnb_pack_op). */
#if defined(FNB_USE_AVX512)
#define OP_NR 12  /* 24 zmm accumulators + 2 weight vectors + 1 broadcast */
#else
#define OP_NR 6   /* 12 of 16 registers */
#endif
#define OP_MR (2 * VL)

static inline __attribute__((always_inline)) void fill_slice(const fnb_job *j, int kind,
                                                              int64_t r0, int64_t rows, int64_t k0,
                                                              int64_t n, float *slice) {
    float tmp[FNB_BLOCK];
#if defined(FNB_USE_AVX512)
    if (rows == OP_MR) {  /* 16 rows at a time, their 32-blocks transposed in registers */
        float blk[16][FNB_BLOCK];
        for (int h = 0; h < OP_MR / 16; h++)
            for (int64_t kk = 0; kk < n; kk += FNB_BLOCK) {
                for (int i = 0; i < 16; i++) {
                    const int64_t r = r0 + 16 * h + i;
                    vf w[NB];
                    load_weights(j, kind, r, (k0 + kk) / FNB_BLOCK, row_scale(j, kind, r), w);
                    UNROLL for (int v = 0; v < NB; v++) vstore(blk[i] + v * VL, w[v]);
                }
                UNROLL for (int v = 0; v < NB; v++) {
                    __m512 m[16];
                    UNROLL for (int i = 0; i < 16; i++) m[i] = _mm512_loadu_ps(blk[i] + v * VL);
                    transpose16(m);
                    UNROLL for (int c = 0; c < 16; c++)
                        vstore(slice + (kk + v * VL + c) * OP_MR + 16 * h, m[c]);
                }
            }
        return;
    }
#endif
    if (rows < OP_MR) memset(slice, 0, sizeof(float) * (size_t)(n * OP_MR));
    for (int64_t i = 0; i < rows; i++) {
        const int64_t r = r0 + i;
        const float rs = row_scale(j, kind, r);
        for (int64_t kk = 0; kk < n; kk += FNB_BLOCK) {
            vf w[NB];
            load_weights(j, kind, r, (k0 + kk) / FNB_BLOCK, rs, w);
            UNROLL for (int v = 0; v < NB; v++) vstore(tmp + v * VL, w[v]);
            for (int q = 0; q < FNB_BLOCK; q++) slice[(kk + q) * OP_MR + i] = tmp[q];
        }
    }
}

static inline __attribute__((always_inline)) void op_tile(const float *slice, const float *xp,
                                                           int64_t n, vf acc[2][OP_NR]) {
    for (int64_t k = 0; k < n; k++) {
        const vf w0 = VLOAD(slice + k * OP_MR), w1 = VLOAD(slice + k * OP_MR + VL);
        UNROLL for (int t = 0; t < OP_NR; t++) {
            const vf b = VSET1(xp[k * OP_NR + t]);
            acc[0][t] = VFMA(w0, b, acc[0][t]);
            acc[1][t] = VFMA(w1, b, acc[1][t]);
        }
    }
}

static inline __attribute__((always_inline)) void op_kind(const fnb_job *j, int kind,
                                                           int64_t r0, int64_t r1) {
    const int64_t K = j->K, T = j->T, tiles = (T + OP_NR - 1) / OP_NR;
    const int64_t nchunk = (K + FNB_OP_KC - 1) / FNB_OP_KC;
    float *slice = fnb_scratch(12, FNB_OP_KC * OP_MR);
    float *c = fnb_scratch(13, tiles * OP_NR * OP_MR);
    if (!slice || !c) { fnb_fail(); return; }
    for (int64_t rb = r0; rb < r1; rb += OP_MR) {
        const int64_t rows = r1 - rb < OP_MR ? r1 - rb : OP_MR;
        for (int64_t ci = 0; ci < nchunk; ci++) {
            const int64_t k0 = ci * FNB_OP_KC, n = K - k0 < FNB_OP_KC ? K - k0 : FNB_OP_KC;
            const int first = ci == 0, last = ci == nchunk - 1;
            fill_slice(j, kind, rb, rows, k0, n, slice);
            for (int64_t tt = 0; tt < tiles; tt++) {
                float *ct = c + tt * OP_NR * OP_MR;
                vf acc[2][OP_NR];
                UNROLL for (int t = 0; t < OP_NR; t++) UNROLL for (int i = 0; i < 2; i++)
                    acc[i][t] = first ? VZERO() : VLOAD(ct + t * OP_MR + i * VL);
                op_tile(slice, j->x + (ci * tiles + tt) * FNB_OP_KC * OP_NR, n, acc);
                if (!last) {
                    UNROLL for (int t = 0; t < OP_NR; t++) UNROLL for (int i = 0; i < 2; i++)
                        vstore(ct + t * OP_MR + i * VL, acc[i][t]);
                    continue;
                }
                for (int t = 0; t < OP_NR && tt * OP_NR + t < T; t++) {
                    float out[OP_MR];
                    vstore(out, acc[0][t]);
                    vstore(out + VL, acc[1][t]);
                    for (int64_t i = 0; i < rows; i++)
                        fnb_store_dt(j->y, j->ydtype, (tt * OP_NR + t) * j->ldy + rb + i, out[i]);
                }
            }
        }
    }
}

static inline __attribute__((always_inline)) void tile_kind(const fnb_job *j, int kind,
                                                             int64_t r0, int64_t r1) {
#if defined(FNB_HAVE_AMX)
    if (j->xh != NULL && j->tile == FNB_TILE_AMX) { amx_kind(j, kind, r0, r1); return; }
#endif
#if defined(FNB_USE_BF16DOT)
    if (j->xh != NULL && j->tile >= FNB_TILE_BF16) {  /* bf16 panels x bf16 activations */
        const int64_t K = j->K, T = j->T;
        int64_t rows = PANEL_BYTES / (K * 2) / PT_R * PT_R;
        if (rows < PT_R) rows = PT_R;
        const int64_t step = fnb_tile_step(), nsteps = (K + step - 1) / step;
        float *panel = fnb_scratch(12, (nsteps * rows * step * 2) / 4 + 1);
        float *part = fnb_scratch(13, rows * T * PART_LANES);
        if (!panel || !part) { fnb_fail(); return; }
        for (int64_t p0 = r0; p0 < r1; p0 += rows) {
            const int64_t p1 = p0 + rows < r1 ? p0 + rows : r1;
            fill_panel(j, kind, p0, p1, panel);
            panel_tokens(j, panel, part, p0, p1);
        }
        return;
    }
#endif
    op_kind(j, kind, r0, r1);
}

/* fn(j, kind, r0, r1) with the job's kind as a constant: one specialised copy per kind (the
 * switch in load_block folds away), each its own function so that registers are allocated per
 * copy (inlined all into fnb_rows, the tiles' accumulators were kept on the stack) */
#define PER_KIND(fn, K)                                                                       \
static __attribute__((noinline)) void fn##_##K(const fnb_job *j, int64_t r0, int64_t r1) {   \
    fn(j, K, r0, r1);                                                                         \
}
#define PER_INT_KIND(fn) PER_KIND(fn, FNB_I8ROW) PER_KIND(fn, FNB_I8GRP) PER_KIND(fn, FNB_I4GRP)
#define PER_EVERY_KIND(fn) PER_KIND(fn, FNB_F32) PER_KIND(fn, FNB_BF16) PER_KIND(fn, FNB_F16)  \
    PER_INT_KIND(fn)
PER_EVERY_KIND(tile_kind)
PER_EVERY_KIND(rows_kind)
PER_INT_KIND(dequant_kind)
PER_INT_KIND(qrows_kind)
#define FOR_INT_KIND(fn) switch (j->wkind) {                                                   \
    case FNB_I8ROW: fn##_FNB_I8ROW(j, r0, r1); break;                                         \
    case FNB_I8GRP: fn##_FNB_I8GRP(j, r0, r1); break;                                         \
    case FNB_I4GRP: fn##_FNB_I4GRP(j, r0, r1); break; }
#define FOR_KIND(fn) switch (j->wkind) {                                                       \
    case FNB_F32: fn##_FNB_F32(j, r0, r1); break;                                             \
    case FNB_BF16: fn##_FNB_BF16(j, r0, r1); break;                                           \
    case FNB_F16: fn##_FNB_F16(j, r0, r1); break;                                             \
    default: FOR_INT_KIND(fn) }

void NAME(fnb_rows)(const fnb_job *j, int64_t r0, int64_t r1) {
    if (j->tile && !j->xq && !j->dequant && j->K % FNB_BLOCK == 0) {
        FOR_KIND(tile_kind)
        return;
    }
#if defined(FNB_USE_BF16DOT)
    if (j->xh && j->wkind == FNB_BF16) { hrows(j, r0, r1); return; }
#endif
    if (j->dequant) {
        FOR_INT_KIND(dequant_kind)
        return;
    }
    if (j->xq) {  /* quantized activations: integer kinds only (fnb_q8_supported) */
        FOR_INT_KIND(qrows_kind)
        return;
    }
    FOR_KIND(rows_kind)
}
