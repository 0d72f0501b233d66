import Testing
import ZramDevice
@testable import ZramDaemon

/// Pins the outputs ZramStats.fields feeds to what the per-output lists produced before it.
@Suite("stats table")
struct StatsTableTests {
    static func snapshot() -> DeviceSnapshot {
        var s = DeviceSnapshot(name: "zram7")
        s.algorithm = "zstd"
        s.level = 3
        s.diskSize = 1000
        s.origDataSize = 2001
        s.comprDataSize = 3002
        s.memUsedTotal = 4003
        s.memLimit = 5004
        s.memUsedMax = 6005
        s.samePages = 7006
        s.pagesCompacted = 8007
        s.hugePages = 9008
        s.hugePagesSince = 10009
        s.failedReads = 11010
        s.failedWrites = 12011
        s.notifyFree = 13012
        s.missFree = 14013
        s.bdCount = 15014
        s.bdReads = 16015
        s.bdWrites = 17016
        s.writebackRuns = 18017
        s.writebackBytesFreed = 19018
        s.recompressRuns = 20019
        s.recompressedPages = 21020
        s.recompressBytesSaved = 22021
        return s
    }

    @Test("Prometheus text: every metric name, type, help text and value as before, in the same order")
    func prometheus() {
        let expected =
            "# HELP zramnbd_disksize_bytes Capacity of the device in uncompressed bytes (disksize).\n# TYPE zramnbd_disksize_bytes gauge\nzramnbd_disksize_bytes{device=\"zram7\"} 1000\n" +
            "# HELP zramnbd_orig_data_bytes Uncompressed size of the data stored (DATA, mm_stat orig_data_size).\n# TYPE zramnbd_orig_data_bytes gauge\nzramnbd_orig_data_bytes{device=\"zram7\"} 2001\n" +
            "# HELP zramnbd_compr_data_bytes Compressed size of the data stored (COMPR, mm_stat compr_data_size).\n# TYPE zramnbd_compr_data_bytes gauge\nzramnbd_compr_data_bytes{device=\"zram7\"} 3002\n" +
            "# HELP zramnbd_mem_used_total_bytes Memory used by the allocator, fragmentation included (TOTAL, mm_stat mem_used_total).\n# TYPE zramnbd_mem_used_total_bytes gauge\nzramnbd_mem_used_total_bytes{device=\"zram7\"} 4003\n" +
            "# HELP zramnbd_mem_limit_bytes Limit on mem_used_total, 0 for none (mem_limit).\n# TYPE zramnbd_mem_limit_bytes gauge\nzramnbd_mem_limit_bytes{device=\"zram7\"} 5004\n" +
            "# HELP zramnbd_mem_used_max_bytes Peak of mem_used_total since start or the last mem-used-max-reset.\n# TYPE zramnbd_mem_used_max_bytes gauge\nzramnbd_mem_used_max_bytes{device=\"zram7\"} 6005\n" +
            "# HELP zramnbd_same_pages Pages filled with one repeated word, stored without memory (mm_stat same_pages).\n# TYPE zramnbd_same_pages gauge\nzramnbd_same_pages{device=\"zram7\"} 7006\n" +
            "# HELP zramnbd_pages_compacted_total Pages freed by compaction (mm_stat pages_compacted).\n# TYPE zramnbd_pages_compacted_total counter\nzramnbd_pages_compacted_total{device=\"zram7\"} 8007\n" +
            "# HELP zramnbd_huge_pages Pages stored uncompressed because they did not compress (mm_stat huge_pages).\n# TYPE zramnbd_huge_pages gauge\nzramnbd_huge_pages{device=\"zram7\"} 9008\n" +
            "# HELP zramnbd_huge_pages_since_total Incompressible pages stored since the device was set up (mm_stat huge_pages_since).\n# TYPE zramnbd_huge_pages_since_total counter\nzramnbd_huge_pages_since_total{device=\"zram7\"} 10009\n" +
            "# HELP zramnbd_failed_reads_total Read requests that failed (io_stat failed_reads).\n# TYPE zramnbd_failed_reads_total counter\nzramnbd_failed_reads_total{device=\"zram7\"} 11010\n" +
            "# HELP zramnbd_failed_writes_total Write requests that failed, e.g. at mem_limit (io_stat failed_writes).\n# TYPE zramnbd_failed_writes_total counter\nzramnbd_failed_writes_total{device=\"zram7\"} 12011\n" +
            "# HELP zramnbd_notify_free_total Pages freed by discard or write-zeroes (io_stat notify_free).\n# TYPE zramnbd_notify_free_total counter\nzramnbd_notify_free_total{device=\"zram7\"} 13012\n" +
            "# HELP zramnbd_backing_pages Pages on the backing device (bd_stat bd_count).\n# TYPE zramnbd_backing_pages gauge\nzramnbd_backing_pages{device=\"zram7\"} 15014\n" +
            "# HELP zramnbd_backing_reads_total Pages read from the backing device (bd_stat bd_reads).\n# TYPE zramnbd_backing_reads_total counter\nzramnbd_backing_reads_total{device=\"zram7\"} 16015\n" +
            "# HELP zramnbd_backing_writes_total Pages written to the backing device (bd_stat bd_writes).\n# TYPE zramnbd_backing_writes_total counter\nzramnbd_backing_writes_total{device=\"zram7\"} 17016\n" +
            "# HELP zramnbd_writeback_runs_total Writeback runs, by ctl writeback or a writeback policy (zramnbd's own).\n# TYPE zramnbd_writeback_runs_total counter\nzramnbd_writeback_runs_total{device=\"zram7\"} 18017\n" +
            "# HELP zramnbd_writeback_freed_bytes_total Pool memory writeback runs gave back (zramnbd's own).\n# TYPE zramnbd_writeback_freed_bytes_total counter\nzramnbd_writeback_freed_bytes_total{device=\"zram7\"} 19018\n" +
            "# HELP zramnbd_recompress_runs_total Recompress runs, by ctl recompress or a recompression policy (zramnbd's own).\n# TYPE zramnbd_recompress_runs_total counter\nzramnbd_recompress_runs_total{device=\"zram7\"} 20019\n" +
            "# HELP zramnbd_recompressed_pages_total Pages recompress stored again, smaller, with a secondary algorithm (zramnbd's own).\n# TYPE zramnbd_recompressed_pages_total counter\nzramnbd_recompressed_pages_total{device=\"zram7\"} 21020\n" +
            "# HELP zramnbd_recompress_saved_bytes_total compr_data_size recompress runs gave back (zramnbd's own).\n# TYPE zramnbd_recompress_saved_bytes_total counter\nzramnbd_recompress_saved_bytes_total{device=\"zram7\"} 22021\n" +
            "# HELP zramnbd_device_info Device configuration; the value is always 1.\n# TYPE zramnbd_device_info gauge\n" +
            "zramnbd_device_info{device=\"zram7\",algorithm=\"zstd\",level=\"3\"} 1\n"
        // The NBD I/O families and build_info follow (IOCountersTests checks their values).
        let text = PrometheusText.render([Self.snapshot()])
        #expect(text.hasPrefix(expected))
        #expect(text.hasSuffix("zramnbd_build_info{version=\"\(BuildInfo.version)\"} 1\n"))
    }

    @Test("stat.json and status list the counters in mm_stat/io_stat/debug_stat/bd_stat order")
    func counterOrder() {
        #expect(Self.snapshot().counters.map(\.name) == [
            "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
            "pages_compacted", "huge_pages", "huge_pages_since", "failed_reads", "failed_writes", "notify_free",
            "miss_free", "bd_count", "bd_reads", "bd_writes", "writeback_runs", "writeback_bytes_freed",
            "recompress_runs", "recompressed_pages", "recompress_bytes_saved",
        ])
        #expect(Self.snapshot().counters.map(\.value) == [2001, 3002, 4003, 5004, 6005, 7006, 8007, 9008, 10009, 11010, 12011, 13012, 14013, 15014, 16015, 17016, 18017, 19018, 20019, 21020, 22021])
    }

    @Test("status --json prints the same keys as numbers")
    func numericKeys() {
        #expect(StatusReport.numericKeys == Set<String>([
            "disksize", "level", "streams", "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit",
            "mem_used_max", "same_pages", "pages_compacted", "huge_pages", "huge_pages_since", "failed_reads",
            "failed_writes", "notify_free", "miss_free", "bd_count", "bd_reads", "bd_writes", "writeback_runs",
            "writeback_bytes_freed", "recompress_runs", "recompressed_pages", "recompress_bytes_saved", "connections",
            "chain_size", "swap_priority", "writeback_limit", "writeback_limit_enable", "writeback_batch_size",
            "compressed_writeback", "writeback_packing",
        ]).union(IOReport.recordKeys))
    }

    @Test("the snapshot renders its sysfs counter texts from its stats")
    func sysfsTexts() {
        let s = Self.snapshot()
        #expect(s.mmStatText == s.stats.mmStatText && s.ioStatText == s.stats.ioStatText)
        #expect(s.debugStatText == "version: 1\n0    14013\n")
        #expect(s.bdStatText == "   15014    16015    17016\n")
    }
}
