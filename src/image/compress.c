/* Decompression of one compressed cluster: raw deflate (qcow2 type 0, no zlib
 * header, written with a 4 KiB window) and zstd (qcow2 type 1, one or more
 * frames without a length prefix). The blob may carry trailing bytes that
 * belong to the next cluster; the output must be exactly outlen bytes. */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "image/image.h"

static int inflate_raw(const void *in, size_t inlen, void *out, size_t outlen)
{
	z_stream s;
	int ret;

	memset(&s, 0, sizeof(s));
	/* -15 accepts every raw stream whose window is <= 32 KiB (QEMU uses -12). */
	if (inflateInit2(&s, -15) != Z_OK)
		return -EIO;
	s.next_in = (Bytef *)in;
	s.avail_in = inlen > UINT32_MAX ? UINT32_MAX : (uInt)inlen;
	s.next_out = out;
	s.avail_out = outlen;
	ret = inflate(&s, Z_FINISH);
	inflateEnd(&s);
	if (s.avail_out != 0)
		return -EIO;
	if (ret != Z_STREAM_END && ret != Z_BUF_ERROR && ret != Z_OK)
		return -EIO;
	return 0;
}

static int unzstd(const void *in, size_t inlen, void *out, size_t outlen)
{
	ZSTD_DCtx *dctx = ZSTD_createDCtx();
	ZSTD_inBuffer ib = {in, inlen, 0};
	ZSTD_outBuffer ob = {out, outlen, 0};
	size_t ret = 1;
	int err = -EIO;

	if (!dctx)
		return -ENOMEM;
	/* Several frames follow each other; keep going until the output is
	 * full and the frame that filled it has ended. */
	while (ob.pos < ob.size || ret != 0) {
		size_t ipos = ib.pos, opos = ob.pos;

		ret = ZSTD_decompressStream(dctx, &ob, &ib);
		if (ZSTD_isError(ret))
			goto out;
		if (ib.pos == ipos && ob.pos == opos)
			goto out; /* no progress: truncated or too large */
	}
	err = 0;
out:
	ZSTD_freeDCtx(dctx);
	return err;
}

int vd_decompress(enum vd_compress algo, const void *in, size_t inlen, void *out, size_t outlen)
{
	switch (algo) {
	case VD_COMPRESS_DEFLATE:
		return inflate_raw(in, inlen, out, outlen);
	case VD_COMPRESS_ZSTD:
		return unzstd(in, inlen, out, outlen);
	}
	return -EIO;
}
