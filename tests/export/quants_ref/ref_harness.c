/* Reference bytes for mlx_ft's K-quant tests: runs ggml's own quantize_row_q{4,5,6}_K_ref over a raw float32 file.
 * usage: harness q4_K|q5_K|q6_K n_floats in.f32 out.bin   (n_floats a multiple of 256) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml-quants.h"  /* declares the *_ref functions; pulls in ggml-common.h (block structs, QK_K) */

/* ggml-quants.c links against a few ggml.c helpers that the *_ref paths never reach. */
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void) t; (void) ne; abort(); }
const char * ggml_type_name(enum ggml_type t) { (void) t; return "?"; }
size_t ggml_type_size(enum ggml_type t) { (void) t; abort(); }

int main(int argc, char ** argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s type n in out\n", argv[0]); return 2; }
    const long n = atol(argv[2]);
    float * x = malloc(n * sizeof(float));
    void * y = malloc(n);  /* any K type is < 1 byte per weight */
    FILE * f = fopen(argv[3], "rb");
    if (!f || fread(x, sizeof(float), n, f) != (size_t) n) { fprintf(stderr, "read failed\n"); return 1; }
    fclose(f);
    size_t size;
    if (!strcmp(argv[1], "q4_K"))      { quantize_row_q4_K_ref(x, y, n); size = n / QK_K * sizeof(block_q4_K); }
    else if (!strcmp(argv[1], "q5_K")) { quantize_row_q5_K_ref(x, y, n); size = n / QK_K * sizeof(block_q5_K); }
    else if (!strcmp(argv[1], "q6_K")) { quantize_row_q6_K_ref(x, y, n); size = n / QK_K * sizeof(block_q6_K); }
    else { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    f = fopen(argv[4], "wb");
    fwrite(y, 1, size, f);
    fclose(f);
    return 0;
}
