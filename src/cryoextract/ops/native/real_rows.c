/* Real-to-complex DFTs of image rows from complex DFTs of half their length, in C.
 *
 * A real row x of even length 2m, read as m complex samples z[j] = x[2j] + i x[2j+1],
 * has the complex DFT Z of length m; the row's own DFT is then, for k = 0..m,
 *     X[k] = E[k] + W^k O[k],  W = exp(-2 pi i / (2m)),
 *     E[k] = (Z[k] + conj Z[m-k]) / 2,  O[k] = (Z[k] - conj Z[m-k]) / (2i),
 * with Z[m] = Z[0]. cryoextract.ops.fourier has FFTW compute Z (a length-m complex
 * transform, which FFTW plans well without measuring: 3x faster than its estimated
 * real transform of length 2m) and calls unpack_real_rows for the first `keep`
 * coefficients of every row, those the Fourier crop keeps.
 *
 * Complex numbers are (re, im) float pairs; arrays are C-contiguous rows. Two complex
 * values at a time with SSE2 where the compiler targets it (every x86-64), one at a
 * time otherwise: the same arithmetic in the same order. Built without -ffast-math
 * (see fill_slices.c).
 */
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* X[k] of one row for k in [first, end), one coefficient at a time. */
static void unpack_scalar(const float *z, int64_t m, const float *twiddle, int64_t first,
                          int64_t end, float *x) {
    for (int64_t k = first; k < end; k++) {
        const int64_t ka = k == m ? 0 : k, kb = k == 0 ? 0 : m - k;
        const float ar = z[2 * ka], ai = z[2 * ka + 1], br = z[2 * kb], bi = z[2 * kb + 1];
        const float even_re = 0.5f * (ar + br), even_im = 0.5f * (ai - bi);
        const float odd_re = 0.5f * (ai + bi), odd_im = 0.5f * (br - ar);
        const float wr = twiddle[2 * k], wi = twiddle[2 * k + 1];
        x[2 * k] = even_re + (wr * odd_re + -(wi * odd_im));
        x[2 * k + 1] = even_im + (wr * odd_im + wi * odd_re);
    }
}

/* packed: (rows, m) complex DFTs Z of the rows' sample pairs; twiddle: (keep,) W^k;
 * out: (rows, out_stride) complex, whose first keep <= m + 1 columns are written with
 * X[0..keep-1]. */
void unpack_real_rows(const float *packed, int64_t rows, int64_t m, const float *twiddle,
                      int64_t keep, float *out, int64_t out_stride) {
    for (int64_t row = 0; row < rows; row++) {
        const float *z = packed + 2 * row * m;
        float *x = out + 2 * row * out_stride;
        int64_t k = 1;
#if defined(__SSE2__)
        const __m128 half = _mm_set1_ps(0.5f);
        const __m128 flip_im = _mm_castsi128_ps(_mm_set_epi32(INT32_MIN, 0, INT32_MIN, 0));
        const __m128 flip_re = _mm_castsi128_ps(_mm_set_epi32(0, INT32_MIN, 0, INT32_MIN));
        for (; k + 2 <= keep && k + 2 <= m; k += 2) {
            const __m128 a = _mm_loadu_ps(z + 2 * k);          /* Z[k], Z[k+1] */
            __m128 b = _mm_loadu_ps(z + 2 * (m - k - 1));      /* Z[m-k-1], Z[m-k] */
            b = _mm_xor_ps(_mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)), flip_im);
            const __m128 even = _mm_mul_ps(half, _mm_add_ps(a, b));
            const __m128 diff = _mm_mul_ps(half, _mm_sub_ps(a, b));  /* (dr, di) */
            /* odd = diff / i = (di, -dr); swapped: (-dr, di) */
            const __m128 odd = _mm_xor_ps(
                _mm_shuffle_ps(diff, diff, _MM_SHUFFLE(2, 3, 0, 1)), flip_im);
            const __m128 odd_swapped = _mm_xor_ps(diff, flip_re);
            const __m128 w = _mm_loadu_ps(twiddle + 2 * k);
            const __m128 wr = _mm_shuffle_ps(w, w, _MM_SHUFFLE(2, 2, 0, 0));
            const __m128 wi = _mm_shuffle_ps(w, w, _MM_SHUFFLE(3, 3, 1, 1));
            /* w * odd = (wr*or + -(wi*oi), wr*oi + wi*or) */
            const __m128 cross = _mm_xor_ps(_mm_mul_ps(wi, odd_swapped), flip_re);
            _mm_storeu_ps(x + 2 * k, _mm_add_ps(even, _mm_add_ps(_mm_mul_ps(wr, odd), cross)));
        }
#endif
        unpack_scalar(z, m, twiddle, 0, 1, x);
        unpack_scalar(z, m, twiddle, k, keep, x);
    }
}
