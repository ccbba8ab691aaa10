"""Getting files from the microscope's folders into the durable queue."""
