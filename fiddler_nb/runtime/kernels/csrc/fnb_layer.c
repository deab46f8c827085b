/* All CPU experts of one MoE layer in one call (gated SiLU experts without biases, weights
 * [N, K], the layout Mixtral / Qwen / OLMoE / DeepSeek use).
 *
 * For the P routed (token, expert) pairs, rows grouped by expert (counts[e] rows for the e-th
 * expert run here): h = gate_up_e(x) [2I], a = silu(h[:I]) * h[I:], y = route * down_e(a) [H].
 * Every matrix of every expert is split in row chunks that the pool's threads take from one
 * list, so two experts of 1 token keep all threads busy; no Python between the matrices.
 * Intermediates are rounded to the activation dtype where stock transformers rounds them (the
 * outputs of each linear, silu, the product, the weighted output), so a bf16 model sees the
 * same roundings as the per-expert path.
 */
#include <math.h>
#include <stddef.h>
#include "fnb_kernels.h"

#define MAX_EXPERTS 512  /* experts of one layer in one call (jobs live on the stack) */

static inline float rd(float v, int dt) {  /* round to the activation dtype and back */
    if (dt == FNB_DT_BF16) return fnb_bf16_to_f32(fnb_f32_to_bf16(v));
    if (dt == FNB_DT_F16) return fnb_f16_to_f32(fnb_f32_to_f16(v));
    return v;
}

/* The tile kernels read each expert's rows packed (fnb_kernels.h): src [P, K] (fp32, or bf16
 * with bf; experts' rows in order) -> dst, the e-th expert's rows from element at[e] on; returns
 * the elements written. at == NULL: only count them. */
static int64_t pack_experts(const void *src, int bf, int nr, const int64_t *counts, int n,
                            int64_t K, void *dst, int64_t *at) {
    const int64_t esize = bf ? 2 : 4, step = fnb_tile_step();
    int64_t off = 0, elems = 0;
    for (int e = 0; e < n; e++) {
        const int T = (int)counts[e];
        if (at) {
            at[e] = elems;
            if (bf) fnb_pack_steps((const char *)src + off * K * esize, 2, T, K, step,
                                   (uint16_t *)dst + elems);
            else fnb_pack_op((const float *)src + off * K, T, K, nr, (float *)dst + elems);
        }
        elems += bf ? fnb_packed_elems(T, K, step) : fnb_op_packed_elems(T, K, nr);
        off += T;
    }
    return elems;
}

/* Returns 0, -1 for bad arguments, -2 when out of memory. y [P, ldy] in ydtype. */
int fnb_moe_experts(int isa, int threads, int wkind, int sdtype, int64_t group, int n_experts,
                    const void *const *w1, const void *const *s1, const void *const *w2,
                    const void *const *s2, const int64_t *counts, int64_t H, int64_t I,
                    const void *x, int xdtype, int64_t ldx, const float *route, void *y,
                    int ydtype, int64_t ldy, int act_dtype, int q8, int tile) {
    fnb_rows_fn fn = fnb_variant(isa);
    int shift1 = fnb_group_shift(wkind, group, H), shift2 = fnb_group_shift(wkind, group, I);
    if (!fn || shift1 < 0 || shift2 < 0 || n_experts < 0 || n_experts > MAX_EXPERTS ||
        tile < FNB_TILE_NONE || tile > FNB_TILE_AMX ||
        (q8 && (!fnb_q8_supported(wkind, H) || !fnb_q8_supported(wkind, I))))
        return -1;
    if (wkind != FNB_I8GRP && wkind != FNB_I4GRP) group = 1;
    if (isa == FNB_ISA_REF) tile = FNB_TILE_NONE;  /* the scalar reference has no tiles */
    int64_t P = 0;
    for (int e = 0; e < n_experts; e++) P += counts[e];
    if (P == 0) return 0;
    /* bf16 weights (or, with FNB_TILE_BF16, integer ones in bf16 panels) and activations on
     * AVX512-BF16: both operands as bf16 (exact: x came in bf16, the SiLU products are rounded
     * to it below) */
    const int hdot = !q8 && act_dtype == FNB_DT_BF16 && fnb_bf16_dot(isa, wkind, tile);
    /* float activations of int4 on AVX-512 are permuted (not for bf16 panels, which are in
     * order); quantized ones always (fnb_kernels.h) */
    const int permute = !q8 && !hdot && wkind == FNB_I4GRP && fnb_i4_permuted(isa);
    fnb_lock();
    float *xf = fnb_scratch(0, P * H), *hf = fnb_scratch(1, P * 2 * I);
    float *af = fnb_scratch(2, P * I), *yf = fnb_scratch(3, P * H);
    int8_t *xq = q8 ? (int8_t *)fnb_scratch(4, P * H / 4 + 1) : NULL;
    float *xs = q8 ? fnb_scratch(5, P * H / FNB_BLOCK + 1) : NULL;
    int8_t *aq = q8 ? (int8_t *)fnb_scratch(6, P * I / 4 + 1) : NULL;
    float *as = q8 ? fnb_scratch(7, P * I / FNB_BLOCK + 1) : NULL;
    int32_t *xc = q8 ? (int32_t *)fnb_scratch(8, P * H / 4 + 1) : NULL;
    int32_t *ac = q8 ? (int32_t *)fnb_scratch(9, P * I / 4 + 1) : NULL;
    if (!xf || !hf || !af || !yf || (q8 && (!xq || !xs || !aq || !as || !xc || !ac))) {
        fnb_unlock();
        return -2;
    }
    fnb_widen(x, xdtype, ldx, (int)P, H, permute, xf);
    if (q8) fnb_quantize_q8(xf, (int)P, H, wkind, xq, xs, xc);
    uint16_t *xh = hdot ? (uint16_t *)fnb_scratch(10, P * H / 2 + 1) : NULL;
    uint16_t *ah = hdot ? (uint16_t *)fnb_scratch(11, P * I / 2 + 1) : NULL;
    if (hdot && (!xh || !ah)) { fnb_unlock(); return -2; }
    if (hdot) fnb_to_bf16(xf, P * H, xh);
    /* tile kernels (K a multiple of 32 in both matrices): x / a packed per expert */
    const int tiled = tile && H % FNB_BLOCK == 0 && I % FNB_BLOCK == 0 ? tile : FNB_TILE_NONE;
    const int nr = fnb_op_nr(isa);
    const int64_t esize = hdot ? 2 : 4;
    static __thread int64_t at_x[MAX_EXPERTS], at_a[MAX_EXPERTS];
    const int64_t nx = tiled ? pack_experts(NULL, hdot, nr, counts, n_experts, H, NULL, NULL) : 0;
    const int64_t na = tiled ? pack_experts(NULL, hdot, nr, counts, n_experts, I, NULL, NULL) : 0;
    char *xpk = tiled ? (char *)fnb_scratch(14, nx * esize / 4 + 1) : NULL;
    char *apk = tiled ? (char *)fnb_scratch(15, na * esize / 4 + 1) : NULL;
    if (tiled && (!xpk || !apk)) { fnb_unlock(); return -2; }
    if (tiled) pack_experts(hdot ? (const void *)xh : (const void *)xf, hdot, nr, counts,
                            n_experts, H, xpk, at_x);
    fnb_job jobs[MAX_EXPERTS];
    int64_t off = 0;
    for (int e = 0; e < n_experts; e++) {  /* gate_up of every expert, one work list */
        const float *xe = tiled && !hdot ? (const float *)xpk + at_x[e] : xf + off * H;
        const uint16_t *he = !hdot ? NULL : tiled ? (const uint16_t *)xpk + at_x[e]
                                                  : xh + off * H;
        fnb_job j = {wkind, w1[e], s1[e], sdtype, group, shift1, H / group, 2 * I, H,
                     xe, (int)counts[e], hf + off * 2 * I, FNB_DT_F32, 2 * I,
                     q8 ? xq + off * H : NULL, q8 ? xs + off * (H / FNB_BLOCK) : NULL,
                     q8 ? xc + off * (H / 4) : NULL, 0, he, tiled};
        jobs[e] = j;
        off += counts[e];
    }
    if (fnb_run_parallel(fn, jobs, n_experts, threads)) { fnb_unlock(); return -2; }
    for (int64_t p = 0; p < P; p++) {  /* silu(gate) * up, in the activation dtype's steps */
        const float *g = hf + p * 2 * I, *u = g + I;
        float *a = af + p * I;
        for (int64_t i = 0; i < I; i++) {
            float gi = rd(g[i], act_dtype), ui = rd(u[i], act_dtype);
            float v = rd(rd(gi / (1.0f + expf(-gi)), act_dtype) * ui, act_dtype);
            int64_t at = permute ? (i / FNB_BLOCK) * FNB_BLOCK + (i & 1) * (FNB_BLOCK / 2) +
                                   (i % FNB_BLOCK) / 2 : i;
            a[at] = v;
        }
    }
    if (q8) fnb_quantize_q8(af, (int)P, I, wkind, aq, as, ac);
    if (hdot) fnb_to_bf16(af, P * I, ah);
    if (tiled) pack_experts(hdot ? (const void *)ah : (const void *)af, hdot, nr, counts,
                            n_experts, I, apk, at_a);
    off = 0;
    for (int e = 0; e < n_experts; e++) {  /* down of every expert */
        const float *ae = tiled && !hdot ? (const float *)apk + at_a[e] : af + off * I;
        const uint16_t *he = !hdot ? NULL : tiled ? (const uint16_t *)apk + at_a[e]
                                                  : ah + off * I;
        fnb_job j = {wkind, w2[e], s2[e], sdtype, group, shift2, I / group, H, I,
                     ae, (int)counts[e], yf + off * H, FNB_DT_F32, H,
                     q8 ? aq + off * I : NULL, q8 ? as + off * (I / FNB_BLOCK) : NULL,
                     q8 ? ac + off * (I / 4) : NULL, 0, he, tiled};
        jobs[e] = j;
        off += counts[e];
    }
    if (fnb_run_parallel(fn, jobs, n_experts, threads)) { fnb_unlock(); return -2; }
    for (int64_t p = 0; p < P; p++)  /* weighted by the routing weight */
        for (int64_t c = 0; c < H; c++)
            fnb_store_dt(y, ydtype, p * ldy + c, rd(yf[p * H + c], act_dtype) * route[p]);
    fnb_unlock();
    return 0;
}
