#pragma once
#include <libnbd.h>
