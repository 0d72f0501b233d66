/* nbd-iops: 4k random reads or writes at a fixed queue depth through libnbd, for the transport
 * table of bench.sh. fio's nbd engine cannot open nbds:// URIs that name a key file (libnbd
 * refuses local files unless the caller allows them), so this drives unix, TCP and TLS alike.
 *   nbd-iops URI read|write QD SECONDS    prints "IOPS"
 */
#include <libnbd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BS 4096
#define MAXQD 256

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv) {
	if (argc != 5) { fprintf(stderr, "usage: nbd-iops URI read|write QD SECONDS\n"); return 2; }
	int writing = strcmp(argv[2], "write") == 0, qd = atoi(argv[3]);
	double seconds = atof(argv[4]);
	if (qd < 1 || qd > MAXQD) { fprintf(stderr, "nbd-iops: QD 1...%d\n", MAXQD); return 2; }
	struct nbd_handle *h = nbd_create();
	if (!h || nbd_set_uri_allow_local_file(h, 1) == -1 || nbd_connect_uri(h, argv[1]) == -1) {
		fprintf(stderr, "nbd-iops: %s\n", nbd_get_error());
		return 1;
	}
	int64_t size = nbd_get_size(h);
	if (size < BS) { fprintf(stderr, "nbd-iops: export too small\n"); return 1; }
	uint64_t blocks = (uint64_t)size / BS;
	static char buf[MAXQD][BS];
	for (int i = 0; i < qd; i++)  /* half compressible, like bench.sh's fio buffers */
		for (int j = 0; j < BS; j++) buf[i][j] = j < BS / 2 ? (char)(next() & 0xff) : 0;
	int64_t cookies[MAXQD];
	long done = 0;
	double start = now(), end = start + seconds;
	for (int i = 0; i < qd; i++) {
		uint64_t off = (next() % blocks) * BS;
		cookies[i] = writing ? nbd_aio_pwrite(h, buf[i], BS, off, NBD_NULL_COMPLETION, 0)
		                     : nbd_aio_pread(h, buf[i], BS, off, NBD_NULL_COMPLETION, 0);
		if (cookies[i] == -1) { fprintf(stderr, "nbd-iops: %s\n", nbd_get_error()); return 1; }
	}
	int inflight = qd;
	while (inflight > 0) {
		if (nbd_poll(h, -1) == -1) { fprintf(stderr, "nbd-iops: %s\n", nbd_get_error()); return 1; }
		for (int i = 0; i < qd; i++) {
			if (cookies[i] <= 0) continue;
			int r = nbd_aio_command_completed(h, cookies[i]);
			if (r == 0) continue;
			if (r == -1) { fprintf(stderr, "nbd-iops: %s\n", nbd_get_error()); return 1; }
			done++;
			cookies[i] = 0;
			inflight--;
			if (now() >= end) continue;
			uint64_t off = (next() % blocks) * BS;
			cookies[i] = writing ? nbd_aio_pwrite(h, buf[i], BS, off, NBD_NULL_COMPLETION, 0)
			                     : nbd_aio_pread(h, buf[i], BS, off, NBD_NULL_COMPLETION, 0);
			if (cookies[i] == -1) { fprintf(stderr, "nbd-iops: %s\n", nbd_get_error()); return 1; }
			inflight++;
		}
	}
	double elapsed = now() - start;
	nbd_shutdown(h, 0);
	nbd_close(h);
	printf("%.0f\n", done / elapsed);
	return 0;
}
