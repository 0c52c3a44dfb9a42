// SPDX-License-Identifier: GPL-2.0
/*
 * A GPIO chip with one input line whose level is a module parameter, so the
 * image test can drive quince's GPIO power-loss source through the real
 * kernel GPIO character device under QEMU. Debian's kernels build neither
 * gpio-sim nor gpio-mockup, and QEMU's x86 machines have no GPIO controller.
 *
 *   echo 1 > /sys/module/gpio_test_chip/parameters/level
 *
 * The chip has no interrupts, like a GPIO expander whose interrupt pin is
 * not wired: edge detection is refused, and quince reads the level instead.
 */
#include <linux/gpio/driver.h>
#include <linux/module.h>

static int level;
module_param(level, int, 0644);
MODULE_PARM_DESC(level, "level of line 0: 0 (low) or 1 (high)");

static int test_chip_get(struct gpio_chip *gc, unsigned int offset)
{
	return READ_ONCE(level) ? 1 : 0;
}

static int test_chip_get_direction(struct gpio_chip *gc, unsigned int offset)
{
	return GPIO_LINE_DIRECTION_IN;
}

static int test_chip_direction_input(struct gpio_chip *gc, unsigned int offset)
{
	return 0;
}

static struct gpio_chip test_chip = {
	.label = "quince-test",
	.owner = THIS_MODULE,
	.base = -1,
	.ngpio = 1,
	.get = test_chip_get,
	.get_direction = test_chip_get_direction,
	.direction_input = test_chip_direction_input,
};

static int __init test_chip_init(void)
{
	return gpiochip_add_data(&test_chip, NULL);
}

static void __exit test_chip_exit(void)
{
	gpiochip_remove(&test_chip);
}

module_init(test_chip_init);
module_exit(test_chip_exit);
MODULE_DESCRIPTION("One GPIO input line set through a module parameter (quince's tests)");
MODULE_LICENSE("GPL");
