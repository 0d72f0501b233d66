// `zramnbd status --classes DEVICE`: zsmalloc's class table (the stats directory's `classes`,
// the kernel's debugfs format) drawn as one bar per class in use.
#if canImport(Glibc)
import Glibc
#endif

enum StatusClasses {
    /// One line of the `classes` table.
    struct Row: Equatable {
        var index: Int
        var size: Int
        var objAllocated: Int
        var objUsed: Int
        var pagesUsed: Int
        var pagesPerZspage: Int
        /// The kernel's zs_can_compact: pages compaction would free in this class.
        var freeable: Int

        /// Objects per zspage, from the table's own columns (allocated objects come in zspages).
        var objsPerZspage: Int {
            let zspages = pagesPerZspage > 0 ? pagesUsed / pagesPerZspage : 0
            return zspages > 0 ? objAllocated / zspages : 0
        }

        /// zsmalloc's rule: a class can give zspages back once it has a whole zspage's worth of
        /// free objects (obj_allocated - obj_used >= objs_per_zspage); `freeable` says how many pages.
        var compactable: Bool { objsPerZspage > 0 && objAllocated - objUsed >= objsPerZspage }

        /// Allocated objects not in use, in percent of those allocated.
        var fragmentation: Int { objAllocated > 0 ? (objAllocated - objUsed) * 100 / objAllocated : 0 }
    }

    /// The rows of a `classes` text: lines of 18 numbers (class, size, 11 fullness groups,
    /// obj_allocated, obj_used, pages_used, pages_per_zspage, freeable); the header and Total are
    /// not classes. Anything else is skipped, never trusted to be numbers.
    static func parse(_ text: String) -> [Row] {
        text.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            // Bounded, so the sums and the bar arithmetic cannot overflow whatever the file says.
            let n = words.compactMap { Int($0) }.filter { (0..<(1 << 40)).contains($0) }
            guard words.count == 18, n.count == 18 else { return nil }
            return Row(index: n[0], size: n[1], objAllocated: n[13], objUsed: n[14], pagesUsed: n[15],
                       pagesPerZspage: n[16], freeable: n[17])
        }
    }

    /// $COLUMNS; else the terminal's width (shells set COLUMNS but seldom export it); else 80.
    static func terminalWidth() -> Int {
        let usable = 20...10_000
        if let p = getenv("COLUMNS"), let w = Int(String(cString: p)), usable.contains(w) { return w }
        var size = winsize()
        if isatty(1) == 1, ioctl(1, UInt(TIOCGWINSZ), &size) == 0, usable.contains(Int(size.ws_col)) { return Int(size.ws_col) }
        return 80
    }

    static func report(device: String, socket: String, width: Int, colour: Bool) throws(DaemonError) -> String {
        guard let line = try ControlClient.send(.status([device]), socket: socket).first else {
            throw .control("no status for \(device)")
        }
        let record = ControlRecord.parse(line)
        guard let dir = record["stats_dir"], !dir.isEmpty else {
            throw .device("\(device) has no stats directory (stats-dir none), where its classes table is published")
        }
        let text = try FileSystem.readText(dir + "/classes")
        return render(device: device, rows: parse(text), width: width, colour: colour)
    }

    static func render(device: String, rows all: [Row], width: Int, colour: Bool) -> String {
        let rows = all.filter { $0.objAllocated > 0 }
        let pages = rows.reduce(0) { $0 + $1.pagesUsed }
        let helped = rows.filter(\.compactable)
        let freeable = rows.reduce(0) { $0 + $1.freeable }
        var out = "\(device): \(rows.count) of \(all.count) classes in use, \(pages) pages (\(human(pages)))\n"
        guard !rows.isEmpty else { return out }

        let header = ["class", "size", "used/allocated", "frag", "pages", "free"]
        let cells = rows.map { r in
            ["\(r.index)", "\(r.size)", "\(r.objUsed)/\(r.objAllocated)", "\(r.fragmentation)%", "\(r.pagesUsed)",
             r.freeable > 0 ? "\(r.freeable)" : "-"]
        }
        var widths = header.map(\.count)
        for c in cells { for (i, v) in c.enumerated() { widths[i] = max(widths[i], v.count) } }
        // The bar takes what the numbers leave of the line (two blanks before each column).
        let barWidth = max(10, width - widths.reduce(0, +) - widths.count * 2)

        func padded(_ row: [String]) -> String {
            row.enumerated().map { i, v in String(repeating: " ", count: widths[i] - v.count) + v }.joined(separator: "  ")
        }
        out += padded(header) + "  objects\n"
        for (r, c) in zip(rows, cells) {
            // Objects in use rounded to the nearest column, but one in use always shows a '#'
            // and one free a '.'.
            var used = (r.objUsed * barWidth + r.objAllocated / 2) / r.objAllocated
            if r.objUsed > 0 { used = max(used, 1) }
            if r.objUsed < r.objAllocated { used = min(used, barWidth - 1) }
            used = min(max(used, 0), barWidth)   // a file claiming more in use than allocated
            let usedBar = String(repeating: "#", count: used), freeBar = String(repeating: ".", count: barWidth - used)
            let bar = colour
                ? "\u{1B}[32m" + usedBar + (r.compactable ? "\u{1B}[33;1m" : "\u{1B}[2m") + freeBar + "\u{1B}[0m"
                : usedBar + freeBar
            out += padded(c) + "  " + bar + "\n"
        }
        out += "#: objects in use, .: allocated but free\n"
        if helped.isEmpty {
            out += "compaction would free nothing: no class has a whole zspage of free objects\n"
        } else {
            let names = helped.map { "\($0.index) (\($0.size) B)" }.joined(separator: ", ")
            out += "compaction would free \(freeable) pages (\(human(freeable))) in \(helped.count) "
                + (helped.count == 1 ? "class" : "classes") + ": \(names); zramnbd ctl \(device) compact\n"
        }
        return out
    }

    static func human(_ pages: Int) -> String { ByteSize.human(UInt64(max(0, pages)).multipliedReportingOverflow(by: 4096).partialValue) }
}
