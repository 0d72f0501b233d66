#pragma once
#include <lzo/lzo1x.h>

// lzo_init() is a macro over __lzo_init_v2; Swift sees only functions.
static inline int clzo_init(void) { return lzo_init(); }
static inline unsigned clzo1x_1_mem_compress(void) { return LZO1X_1_MEM_COMPRESS; }
