/* Background normalisation of a float32 image stack in place, in C.
 *
 * The computation of cryoextract/ops/normalize.py's numpy path (RELION's ``normalise``,
 * docs/conventions.md "Normalisation"), one image at a time while it is in the cache:
 * the image's mean, then over the background weights the sums of (x*v, y*v, v, v*v)
 * of the centred values v, the least-squares plane a*x + b*y + c (or the constant c
 * alone) from the shared inverse normal matrix, the residual's standard deviation, and
 * one pass writing (value - mean - plane) * sign / std, in float32 as the numpy path.
 * Each row is summed in LANES independent float32 partial sums (vectorisable without
 * reassociating, so the result does not depend on the compiler's flags) and the rows'
 * sums are added in double precision.
 *
 * Arrays are C-contiguous. Built without -ffast-math (see fill_slices.c).
 */
#include <math.h>
#include <stdint.h>

#define LANES 8

/* The total of LANES partial sums. */
static double lane_sum(const float *partial) {
    double total = 0.0;
    for (int k = 0; k < LANES; k++) total += partial[k];
    return total;
}

/* images: (n, h, w) float32, normalised in place.
 * weights: (h, w) float32 0/1 background mask; x: (w,) (xf: the same in float32) and
 * y: (h,) pixel coordinates about the box centre; gram_inverse: 3x3 row-major inverse
 * normal matrix of the plane over the mask; count: number of background pixels.
 * fit_ramp: 1 fits the plane, 0 only the background mean.
 * sign: +1, or -1 to invert the contrast; min_std: an image whose background std is
 * below it is only multiplied by sign, and flagged in is_flat (n,) uint8. */
void normalise_images(float *images, int64_t n, int64_t h, int64_t w,
                      const float *weights, const double *x, const float *xf, const double *y,
                      const double *gram_inverse, double count, int fit_ramp,
                      double sign, double min_std, uint8_t *is_flat) {
    const int64_t size = h * w;
    for (int64_t image = 0; image < n; image++) {
        float *pixels = images + image * size;

        double mean = 0.0;
        int64_t j = 0;
        for (int64_t row = 0; row < h; row++) {
            const float *line = pixels + row * w;
            float partial[LANES] = {0};
            int64_t col = 0;
            for (; col + LANES <= w; col += LANES)
                for (int k = 0; k < LANES; k++) partial[k] += line[col + k];
            mean += lane_sum(partial);
            for (; col < w; col++) mean += (double)line[col];
        }
        mean /= (double)size;

        /* per row: float partial sums of the centred values (at most w / LANES terms
         * each), added up in double */
        const float centre = (float)mean;
        double sum_x = 0.0, sum_y = 0.0, sum_v = 0.0, sum_vv = 0.0;
        for (int64_t row = 0; row < h; row++) {
            const float *line = pixels + row * w;
            const float *mask = weights + row * w;
            float pv[LANES] = {0}, pxv[LANES] = {0}, pvv[LANES] = {0};
            int64_t col = 0;
            for (; col + LANES <= w; col += LANES)
                for (int k = 0; k < LANES; k++) {
                    float v = line[col + k] - centre;
                    float masked = mask[col + k] * v;
                    pv[k] += masked;
                    pxv[k] += masked * xf[col + k];
                    pvv[k] += masked * v;
                }
            double row_v = lane_sum(pv), row_xv = lane_sum(pxv), row_vv = lane_sum(pvv);
            for (; col < w; col++) {
                double v = (double)line[col] - (double)centre;
                double masked = (double)mask[col] * v;
                row_v += masked;
                row_xv += masked * x[col];
                row_vv += masked * v;
            }
            sum_v += row_v;
            sum_x += row_xv;
            sum_y += row_v * y[row];
            sum_vv += row_vv;
        }
        double a = 0.0, b = 0.0, c, variance;
        if (fit_ramp) {
            const double rhs[3] = {sum_x, sum_y, sum_v};
            double plane[3];
            for (int col = 0; col < 3; col++)
                plane[col] = rhs[0] * gram_inverse[col] + rhs[1] * gram_inverse[3 + col]
                             + rhs[2] * gram_inverse[6 + col];
            a = plane[0];
            b = plane[1];
            c = plane[2];
            variance = (sum_vv - (a * sum_x + b * sum_y + c * sum_v)) / count;
        } else {
            c = sum_v / count;
            variance = sum_vv / count - c * c;
        }
        double std = sqrt(variance > 0.0 ? variance : 0.0);
        is_flat[image] = std < min_std;
        if (is_flat[image]) {
            if (sign < 0.0)
                for (j = 0; j < size; j++) pixels[j] = -pixels[j];
            continue;
        }
        const float scale = (float)(sign / std), slope = (float)a;
        for (int64_t row = 0; row < h; row++) {
            float *line = pixels + row * w;
            /* centred first, in float32 as the sums saw the values: the plane, fitted
             * to the centred values, is then small and rounds finely */
            const float offset = (float)(b * y[row] + c);
            for (int64_t col = 0; col < w; col++)
                line[col] = ((line[col] - centre) - offset - slope * xf[col]) * scale;
        }
    }
}
