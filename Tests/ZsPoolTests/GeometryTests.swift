import Testing
@testable import ZsPool

/// The kernel's class table: live 6.18 and the min-waste rule (shared/docs/zram-zsmalloc.md §2).
@Suite struct GeometryTests {
    // chain size -> (distinct classes, huge watermark); counts include the huge class 254.
    static let kernelTable: [Int: (classes: Int, watermark: Int)] = [
        4: (69, 3264), 5: (86, 3408), 6: (94, 3504), 7: (110, 3584), 8: (119, 3632), 9: (136, 3680),
        10: (141, 3712), 11: (153, 3744), 12: (159, 3776), 13: (173, 3792), 14: (179, 3808),
        15: (186, 3840), 16: (192, 3840),
    ]

    @Test(arguments: 4...16)
    func classCountAndWatermarkMatchTheKernel(chain: Int) {
        let g = ZsGeometry(chainSize: chain)
        let expected = Self.kernelTable[chain]!
        #expect(g.classes.count == expected.classes)
        #expect(g.hugeClassSize == expected.watermark - 7)
        // The largest non-huge class is the watermark; everything above it aliases class 254.
        let nonHuge = g.classes.filter { !$0.isHuge }
        #expect(nonHuge.last?.size == expected.watermark)
        #expect(g.classes.last == ZsClassInfo(index: 254, size: 4096, pagesPerZspage: 1, objsPerZspage: 1,
                                              firstIndex: (expected.watermark - 32) / 16 + 1))
    }

    /// Every chain-8 class as (index, size, pages_per_zspage, objs_per_zspage), as the kernel builds them.
    static let chain8: [(Int, Int, Int, Int)] = [
        (0,32,1,128),(1,48,3,256),(2,64,1,64),(3,80,5,256),(4,96,3,128),(5,112,7,256),(6,128,1,32),(7,144,7,199),
        (8,160,5,128),(9,176,4,93),(10,192,3,64),(11,208,3,59),(12,224,7,128),(13,240,1,17),(14,256,1,16),
        (15,272,1,15),(16,288,5,71),(17,304,7,94),(18,320,5,64),(19,336,6,73),(20,352,8,93),(21,368,8,89),
        (22,384,3,32),(23,400,5,51),(24,416,6,59),(25,432,7,66),(26,448,7,64),(27,464,5,44),(28,480,2,17),
        (29,496,4,33),(30,512,1,8),(31,528,4,31),(32,544,2,15),(33,560,7,51),(34,576,1,7),(35,592,8,55),
        (36,608,7,47),(37,624,2,13),(38,640,5,32),(39,656,5,31),(40,672,1,6),(41,688,8,47),(42,704,5,29),
        (43,720,3,17),(44,736,2,11),(45,752,7,38),(46,768,3,16),(47,784,5,26),(49,816,1,5),(50,832,8,39),
        (51,848,5,24),(52,864,7,33),(53,880,8,37),(54,896,7,32),(55,912,7,31),(56,928,5,22),(57,944,3,13),
        (58,960,4,17),(59,976,6,25),(60,992,8,33),(62,1024,1,4),(64,1056,8,31),(65,1072,5,19),(66,1088,4,15),
        (67,1104,3,11),(68,1120,8,29),(69,1136,5,18),(71,1168,2,7),(72,1184,7,24),(73,1200,5,17),
        (74,1216,3,10),(75,1232,7,23),(76,1248,4,13),(78,1280,5,16),(79,1296,7,22),(83,1360,1,3),
        (87,1424,8,23),(88,1440,6,17),(89,1456,5,14),(91,1488,4,11),(92,1504,7,19),(94,1536,3,8),
        (95,1552,8,21),(96,1568,5,13),(97,1584,7,18),(100,1632,2,5),(103,1680,7,17),(104,1696,5,12),
        (105,1712,8,19),(107,1744,3,7),(110,1792,7,16),(111,1808,4,9),(114,1856,5,11),(116,1888,6,13),
        (117,1904,7,15),(118,1920,8,17),(126,2048,1,2),(134,2176,8,15),(135,2192,7,13),(137,2224,6,11),
        (140,2272,5,9),(144,2336,4,7),(147,2384,7,12),(151,2448,3,5),(155,2512,8,13),(158,2560,5,8),
        (160,2592,7,11),(168,2720,2,3),(177,2864,7,10),(180,2912,5,7),(184,2976,8,11),(190,3072,3,4),
        (197,3184,7,9),(202,3264,4,5),(211,3408,5,6),(217,3504,6,7),(222,3584,7,8),(225,3632,8,9),
        (254,4096,1,1),
    ]

    @Test func chain8ClassesInFull() {
        let g = ZsGeometry(chainSize: 8)
        #expect(g.classes.count == Self.chain8.count)
        for (c, e) in zip(g.classes, Self.chain8) {
            #expect(c.index == e.0 && c.size == e.1 && c.pagesPerZspage == e.2 && c.objsPerZspage == e.3,
                    "class \(c.index)/\(c.size): \(c.pagesPerZspage) pages, \(c.objsPerZspage) objs; kernel: \(e)")
        }
        #expect(g.hugeClassSize == 3625)
    }

    @Test func class96UsesFivePagesAtChain8AndMergesAtChain4() {
        let c8 = ZsGeometry(chainSize: 8)
        let k96 = c8.classes[c8.positionForIndex[96]]
        #expect(k96.index == 96 && k96.pagesPerZspage == 5 && k96.objsPerZspage == 13)
        // Chain 4: 2 pages / 5 objects wins, so 95...99 merge into class 100 (1632 B).
        let c4 = ZsGeometry(chainSize: 4)
        let k = c4.classes[c4.positionForIndex[96]]
        #expect(k.index == 100 && k.size == 1632 && k.pagesPerZspage == 2 && k.objsPerZspage == 5)
    }

    @Test func chain16HugeRegionMatchesTheKernelListing() {
        let g = ZsGeometry(chainSize: 16)
        // The doc's chain-16 listing under the min-waste rule: 3424 merges into 3440 (16 pages, 19 objs).
        let top = g.classes.filter { $0.size >= 3264 }.map { [$0.index, $0.size, $0.pagesPerZspage] }
        #expect(top == [[202, 3264, 4], [206, 3328, 13], [207, 3344, 9], [208, 3360, 14], [211, 3408, 5],
                        [213, 3440, 16], [214, 3456, 11], [217, 3504, 6], [219, 3536, 13], [222, 3584, 7],
                        [223, 3600, 15], [225, 3632, 8], [228, 3680, 9], [230, 3712, 10], [232, 3744, 11],
                        [234, 3776, 12], [235, 3792, 13], [236, 3808, 14], [238, 3840, 15], [254, 4096, 1]])
    }

    @Test func lookupFollowsAliasesWithoutAddingTheHeader() {
        let g = ZsGeometry(chainSize: 8)
        #expect(g.lookupClassIndex(1) == 0)
        #expect(g.lookupClassIndex(32) == 0)
        #expect(g.lookupClassIndex(33) == 1)
        #expect(g.lookupClassIndex(3632) == 225)
        #expect(g.lookupClassIndex(3633) == 254)
        #expect(g.lookupClassIndex(1568) == 96)
        #expect(g.lookupClassIndex(1569) == 97)
        // zs_malloc adds 8 bytes: 3624 fits class 225 (3632), 3625 is huge.
        #expect(g.classes[g.classPosition(forAllocation: 3624)].index == 225)
        #expect(g.classes[g.classPosition(forAllocation: 3625)].index == 254)
        #expect(g.classes[g.classPosition(forAllocation: 4096)].index == 254)
    }
}
