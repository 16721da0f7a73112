/* The interpolation loop of cryoextract.ops.projection's central slices, in C.
 *
 * The same computation as cryoextract/ops/slice_kernel.py (numba), argument for
 * argument: per pose, first every point's voxel index, trilinear weights and output
 * factor (CTF times shift phases), then the gathers with the cache lines of the point
 * PREFETCH_DISTANCE ahead requested in advance. Built when the package is built
 * (hatch_build.py) and loaded with ctypes by cryoextract.ops.native: no numba to import
 * (0.5 s) or to load from its cache (0.9 s) in every process that projects.
 *
 * Complex numbers are (re, im) float pairs; arrays are C-contiguous. Built without
 * -ffast-math, whose start-up code would set flush-to-zero for the whole process.
 *
 * With GCC on x86-64 and glibc the loop is compiled three times, for x86-64-v4
 * (AVX-512), v3 (AVX2, FMA) and the baseline, and the best the running CPU supports is
 * chosen when the library is loaded (target_clones, an ifunc): 15-20 % less time per
 * slice on AVX-512 CPUs, the same library on any x86-64. The results are bit for bit
 * the same (ISO C mode: no contraction into FMA, no reassociation). hatch_build.py
 * compiles again with CRYOEXTRACT_NO_CLONES where the toolchain refuses them.
 */
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 \
    && defined(__GLIBC__) && !defined(CRYOEXTRACT_NO_CLONES)
#define BEST_ISA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BEST_ISA
#endif

#define PREFETCH_DISTANCE 8

typedef struct { float re, im; } cfloat;

static inline cfloat cmul(cfloat a, cfloat b) {
    cfloat r = {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
    return r;
}

/* v0 + f * (v1 - v0), complex */
static inline cfloat lerp(cfloat v0, cfloat v1, float f) {
    cfloat r = {v0.re + f * (v1.re - v0.re), v0.im + f * (v1.im - v0.im)};
    return r;
}

/* Returns 0, or -1 when the scratch memory cannot be allocated. */
BEST_ISA
int fill_slices(
    const cfloat *voxels, int64_t channels, int64_t plane_stride, int64_t row_stride,
    float half_padded, const float *axes, int64_t poses,
    const int64_t *flat, const int64_t *rows, const int64_t *cols, int64_t points,
    const float *kx, const float *ky,
    const cfloat *phase_x, int64_t phase_x_width,
    const cfloat *phase_y, int64_t phase_y_width,
    const float *ctf, int64_t ctf_count, int64_t ctf_width,
    cfloat *out, int64_t out_width)
{
    const int64_t ahead = PREFETCH_DISTANCE;
    int64_t *index = malloc(sizeof(int64_t) * (size_t)(points + ahead));
    float *weights = malloc(sizeof(float) * 4 * (size_t)(points > 0 ? points : 1));
    cfloat *factor = malloc(sizeof(cfloat) * (size_t)(points > 0 ? points : 1));
    if (index == NULL || weights == NULL || factor == NULL) {
        free(index); free(weights); free(factor);
        return -1;
    }
    const int64_t row_step = row_stride * channels, plane_step = plane_stride * channels;
    for (int64_t b = 0; b < poses; b++) {
        const float *a = axes + 6 * b;
        const float ax = a[0], ay = a[1], az = a[2], bx = a[3], by = a[4], bz = a[5];
        const float *ctf_row = ctf + (ctf_count > 1 ? b : 0) * ctf_width;
        const cfloat *px = phase_x + b * phase_x_width, *py = phase_y + b * phase_y_width;
        for (int64_t m = 0; m < points; m++) {  /* indices, weights, factors */
            float x = kx[m] * ax + ky[m] * bx;
            float y = kx[m] * ay + ky[m] * by;
            float z = kx[m] * az + ky[m] * bz;
            const float s = x >= 0.0f ? 1.0f : -1.0f;  /* x < 0: Friedel mate */
            x *= s;
            y = y * s + half_padded;
            z = z * s + half_padded;
            const int64_t x0 = (int64_t)x, y0 = (int64_t)y, z0 = (int64_t)z;
            float *w = weights + 4 * m;
            w[0] = x - (float)x0; w[1] = y - (float)y0; w[2] = z - (float)z0; w[3] = s;
            index[m] = (z0 * plane_stride + y0 * row_stride + x0) * channels;
            cfloat f = cmul(py[rows[m]], px[cols[m]]);
            const float c = ctf_row[flat[m]];
            f.re *= c; f.im *= c;
            factor[m] = f;
        }
        for (int64_t m = points; m < points + ahead; m++)
            index[m] = points ? index[points - 1] : 0;
        for (int64_t c = 0; c < channels; c++) {  /* the gathers */
            cfloat *spectrum = out + (c * poses + b) * out_width;
            for (int64_t m = 0; m < points; m++) {
                const int64_t later = index[m + ahead] + c;
                __builtin_prefetch(voxels + later, 0, 3);
                __builtin_prefetch(voxels + later + row_step, 0, 3);
                __builtin_prefetch(voxels + later + plane_step, 0, 3);
                __builtin_prefetch(voxels + later + plane_step + row_step, 0, 3);
                const int64_t i = index[m] + c, j = i + row_step, k = i + plane_step;
                const int64_t h = k + row_step;
                const float *w = weights + 4 * m;
                const cfloat v00 = lerp(voxels[i], voxels[i + channels], w[0]);
                const cfloat v01 = lerp(voxels[j], voxels[j + channels], w[0]);
                const cfloat v10 = lerp(voxels[k], voxels[k + channels], w[0]);
                const cfloat v11 = lerp(voxels[h], voxels[h + channels], w[0]);
                const cfloat v = lerp(lerp(v00, v01, w[1]), lerp(v10, v11, w[1]), w[2]);
                const cfloat mirrored = {v.re, w[3] * v.im};
                spectrum[flat[m]] = cmul(mirrored, factor[m]);
            }
        }
    }
    free(index); free(weights); free(factor);
    return 0;
}
