/* Small helpers: growable arrays, the seeded hash and an exact port of math.fsum. */
#include <math.h>
#include <stdlib.h>

#include "common.h"

int ep_grow(void **ptr, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return 0;
    size_t next = *cap ? *cap : 4;
    while (next < need) next *= 2;
    void *grown = realloc(*ptr, next * item);
    if (grown == NULL) return -1;
    *ptr = grown;
    *cap = next;
    return 0;
}

/* --- SipHash-1-3 (Aumasson and Bernstein), one compression and three finalisation rounds --- */

static uint64_t k0 = UINT64_C(0x0706050403020100), k1 = UINT64_C(0x0f0e0d0c0b0a0908);

void ep_hash_seed(const uint8_t key[16]) {
    memcpy(&k0, key, 8);
    memcpy(&k1, key + 8, 8);
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                               \
    do {                                                                                       \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                              \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                 \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                 \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                              \
    } while (0)

uint64_t ep_hash(const uint8_t *data, size_t len) {
    uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575);
    uint64_t v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261);
    uint64_t v3 = k1 ^ UINT64_C(0x7465646279746573);
    const uint8_t *end = data + (len & ~(size_t)7);
    for (; data != end; data += 8) {
        uint64_t m;
        memcpy(&m, data, 8); /* little endian on every target we build for */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = ((uint64_t)len) << 56;
    switch (len & 7) {
    case 7: b |= ((uint64_t)data[6]) << 48; /* fall through */
    case 6: b |= ((uint64_t)data[5]) << 40; /* fall through */
    case 5: b |= ((uint64_t)data[4]) << 32; /* fall through */
    case 4: b |= ((uint64_t)data[3]) << 24; /* fall through */
    case 3: b |= ((uint64_t)data[2]) << 16; /* fall through */
    case 2: b |= ((uint64_t)data[1]) << 8;  /* fall through */
    case 1: b |= ((uint64_t)data[0]); break;
    case 0: break;
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* --- math.fsum --------------------------------------------------------------------------------
 * Shewchuk's algorithm with CPython's handling of specials and its half-even correction, so the
 * result is the same double CPython returns. */

#define FSUM_INLINE 32

int ep_fsum(const double *parts, size_t count, double *out) {
    double inline_partials[FSUM_INLINE];
    double *p = inline_partials;
    size_t n = 0, cap = FSUM_INLINE;
    double special_sum = 0.0, inf_sum = 0.0;
    double x, y, t, hi, yr, lo = 0.0;
    int status = 0;

    for (size_t k = 0; k < count; k++) {
        x = parts[k];
        double xsave = x;
        size_t i = 0;
        for (size_t j = 0; j < n; j++) {
            y = p[j];
            if (fabs(x) < fabs(y)) {
                t = x;
                x = y;
                y = t;
            }
            hi = x + y;
            yr = hi - x;
            lo = y - yr;
            if (lo != 0.0) p[i++] = lo;
            x = hi;
        }
        n = i;
        if (x != 0.0) {
            if (!isfinite(x)) {
                if (isfinite(xsave)) { /* intermediate overflow: math.fsum raises */
                    status = 1;
                    goto done;
                }
                if (isinf(xsave)) inf_sum += xsave;
                special_sum += xsave;
                n = 0;
            } else {
                if (n >= cap) {
                    size_t next = cap * 2;
                    double *grown = p == inline_partials ? malloc(next * sizeof(double))
                                                         : realloc(p, next * sizeof(double));
                    if (grown == NULL) {
                        status = -1;
                        goto done;
                    }
                    if (p == inline_partials) memcpy(grown, inline_partials, n * sizeof(double));
                    p = grown;
                    cap = next;
                }
                p[n++] = x;
            }
        }
    }
    if (special_sum != 0.0) {
        if (isnan(inf_sum)) { /* -inf + inf: math.fsum raises */
            status = 1;
        } else {
            *out = special_sum;
        }
        goto done;
    }
    hi = 0.0;
    if (n > 0) {
        hi = p[--n];
        while (n > 0) {
            x = hi;
            y = p[--n];
            hi = x + y;
            yr = hi - x;
            lo = y - yr;
            if (lo != 0.0) break;
        }
        if (n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0))) {
            y = lo * 2.0;
            x = hi + y;
            yr = x - hi;
            if (y == yr) hi = x;
        }
    }
    *out = hi;
done:
    if (p != inline_partials) free(p);
    return status;
}

double ep_exact_sum(const double *parts, size_t n) {
    double sum;
    if (ep_fsum(parts, n, &sum) == 0) return sum;
    /* Where math.fsum raises, the engines agree on the plain left-to-right sum. */
    sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += parts[i];
    return sum;
}
